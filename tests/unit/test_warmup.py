"""The engine package stands apart from the server's settings."""

import ast
from pathlib import Path

import kleinserve

PACKAGE = Path(kleinserve.__file__).parent
# The server around the engine: the engine package must reach none of it, not even through other modules.
SERVER_MODULES = (
    "kleinserve.settings", "kleinserve.service", "kleinserve.roles", "kleinserve.cli", "kleinserve.api",
    "kleinserve.jobs", "kleinserve.storage",
)  # fmt: skip


def imported_kleinserve_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {module for module in modules if module.split(".")[0] == "kleinserve"}


def module_file(module: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_the_engine_package_never_reaches_the_servers_settings():
    """Every module the engine package imports, directly or through other kleinserve modules (function-level
    imports included), is outside the server."""
    reached = {f"kleinserve.engine.{path.stem}": path for path in (PACKAGE / "engine").glob("*.py")}
    via: dict[str, str] = {}
    todo = list(reached)
    while todo:
        module = todo.pop()
        for imported in imported_kleinserve_modules(reached[module]):
            path = module_file(imported)
            if path is not None and imported not in reached:
                reached[imported], via[imported] = path, module
                todo.append(imported)
    for module in reached:
        server = [name for name in SERVER_MODULES if module == name or module.startswith(name + ".")]
        assert not server, f"{module} is reached from the engine via {via.get(module)}"
