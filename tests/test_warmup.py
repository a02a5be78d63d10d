"""Warm-up pays every compile before serving; the engine package stands apart from the server's settings."""

import ast
from pathlib import Path

import torch
from torch._dynamo.utils import counters

import kleinserve
from kleinserve.engine import Engine
from kleinserve.engine.config import EngineConfig
from kleinserve.engine.optimize import Optimizations
from kleinserve.engine.warmup import warm_up
from kleinserve.models import Variant, resolve_model
from kleinserve.request import build_request

PACKAGE = Path(kleinserve.__file__).parent
# The server around the engine: the engine package must reach none of it, not even through other modules.
SERVER_MODULES = (
    "kleinserve.settings", "kleinserve.service", "kleinserve.roles", "kleinserve.cli", "kleinserve.api",
    "kleinserve.jobs", "kleinserve.storage",
)  # fmt: skip


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_after_warm_up_a_compiled_engine_forms_any_batch_without_compiling(checkpoints):
    torch._dynamo.reset()  # compiled code is shared by all engines in the process: start with none
    sizes = ((64, 64), (96, 64))
    config = EngineConfig(
        device="cpu", max_batch_images=4, optimizations=Optimizations(compile=True), warmup_sizes=sizes
    )
    engine = Engine.load(resolve_model(str(checkpoints[Variant.DISTILLED])), config)
    before = compiled_graphs()
    warm_up(engine, config)
    warmed = compiled_graphs()
    assert warmed > before  # the counter is real: warm-up compiled
    # Batches of 1..4 images, some joined from several requests; a recompile would raise, not just count.
    with torch._dynamo.config.patch(error_on_recompile=True):
        for width, height in sizes:
            for counts in ((2,), (1, 1), (3,), (2, 2), (4,), (1,)):
                engine.generate([request(engine, width, height, n) for n in counts])
    assert compiled_graphs() == warmed


def request(engine: Engine, width: int, height: int, images: int):
    return build_request(engine.spec, prompt="later", width=width, height=height, seed=5, num_images=images)


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
