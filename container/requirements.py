"""Print kleinserve's dependencies (and those of the extras named in argv[2], comma-separated) from
pyproject.toml (argv[1]), leaving torch out: the Containerfile installs its dependencies in a layer of
their own before the source, and torch before them, from the index of the build it chose."""

import sys
import tomllib

with open(sys.argv[1], "rb") as file:
    project = tomllib.load(file)["project"]
extras = [name for name in sys.argv[2].split(",") if name]
optional = project["optional-dependencies"]
requirements = project["dependencies"] + [r for name in extras for r in optional[name]]
print("\n".join(r for r in requirements if not r.startswith(("torch", "kleinserve"))))
