"""The layers of DESIGN.md, checked on the source: every import in src/kleinserve (at the top of a module or
inside a function) goes down the layers or stays in its own, no two modules import each other through any
path, the dialects reach neither the job store, the engine nor a storage backend, and the service layer
holds no branch on a role's name (what differs between roles is which parts are assembled, in roles/)."""

import ast
import re
from pathlib import Path

import kleinserve

PACKAGE = Path(kleinserve.__file__).parent

# Top to bottom; a module may import its own layer and those below it. The first matching prefix wins.
LAYERS = (
    ("cli", ("kleinserve.cli", "kleinserve.__main__")),
    ("roles", ("kleinserve.roles",)),
    ("api", ("kleinserve.api",)),
    ("service", ("kleinserve.service",)),
    ("jobs and storage", ("kleinserve.jobs", "kleinserve.storage", "kleinserve.metrics")),
    ("engine", ("kleinserve.engine", "kleinserve.tiny")),
    ("domain", ("kleinserve",)),  # models, request, errors, imaging, usage, pricing, settings, job, ...
)
DIALECT_NEVER = ("kleinserve.jobs", "kleinserve.engine", "kleinserve.storage.s3", "torch")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module (of ours, or a third-party top-level name) that `path` imports anywhere in its body."""
    named = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & known.keys()
            named |= submodules
            if len(submodules) < len(node.names):  # names defined in the module itself
                named.add(node.module)
    return {name if name.startswith("kleinserve") else name.split(".")[0] for name in named} - {"kleinserve"}


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer")


GRAPH = {name: imports_of(path, modules()) for name, path in modules().items()}


def test_every_import_goes_down_the_layers():
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in GRAPH.items()
        for target in targets
        if target.startswith("kleinserve.") and layer_of(target) < layer_of(module)
    ]
    assert upward == []


def test_no_module_reaches_itself_through_its_imports():
    def reachable(start: str) -> set[str]:
        seen, pending = set(), [start]
        while pending:
            for target in GRAPH.get(pending.pop(), ()):
                if target in GRAPH and target not in seen:
                    seen.add(target)
                    pending.append(target)
        return seen

    circles = sorted(module for module in GRAPH if module in reachable(module))
    assert circles == []


def test_dialects_reach_neither_the_job_store_the_engine_nor_a_storage_backend():
    reached = {
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.startswith("kleinserve.api")
        for target in targets
        if any(target == never or target.startswith(never + ".") for never in DIALECT_NEVER)
    }
    assert reached == set()


def test_the_service_layer_has_no_branch_on_a_role_name():
    branches = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in (PACKAGE / "service").rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\brole\s*(==|!=|in\b)|\.role\b|worker_models is (not )?None", line)
    ]
    assert branches == []


def test_the_readme_layout_names_every_module():
    readme = (PACKAGE.parents[1] / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    unnamed = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and not re.search(rf"\b{path.stem}\b", layout)
    ] + [
        f"{folder.relative_to(PACKAGE)}/"
        for folder in PACKAGE.rglob("*")
        if folder.is_dir() and folder.name != "__pycache__" and f"{folder.name}/" not in layout
    ]
    assert unnamed == []
