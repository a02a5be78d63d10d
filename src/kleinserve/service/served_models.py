"""The models a server serves: which ones (from --model and --demo), and each one's state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kleinserve.errors import ModelNotReady, UnknownModel
from kleinserve.models import ModelSpec, resolve_model, with_local_path
from kleinserve.settings import Settings

if TYPE_CHECKING:
    from kleinserve.jobs.batcher import Batcher

DEMO_MODEL_ID = "flux.2-klein-4b"
DEMO_LABEL = "DEMO: tiny random-weight test model; its images are noise, not FLUX.2 [klein]"


@dataclass
class ServedModel:
    spec: ModelSpec
    demo: bool = False
    state: str = "loading"  # loading | ready | failed
    error: str | None = None
    batcher: Batcher | None = None  # once loaded
    workers: int | None = None  # run in workers: live workers with it ready (None: this process runs it)

    @property
    def names(self) -> list[str]:
        return [self.spec.id, *self.spec.aliases]

    def require_ready(self) -> None:
        """ModelNotReady unless it is ready to run jobs."""
        if self.state == "failed":
            raise ModelNotReady(f"{self.spec.id} is out of service: {self.error}")
        if self.state != "ready":
            raise ModelNotReady(f"{self.spec.id} is still loading; retry shortly")


def served_specs(settings: Settings) -> list[tuple[ModelSpec, bool]]:
    """(spec, is_demo) for each --model ID or ID=PATH, plus the demo model. Raises UnknownModel early."""
    specs = []
    for entry in settings.models:
        name, _, path = entry.partition("=")
        spec = resolve_model(name)
        if path:
            spec = with_local_path(spec, Path(path).expanduser().resolve())
        specs.append((spec, False))
    if settings.demo:
        specs.append((with_local_path(resolve_model(DEMO_MODEL_ID), settings.demo_checkpoint_dir), True))
    ids = [spec.id for spec, _ in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UnknownModel(f"model {duplicates[0]} is given twice; serve each model once")
    if not specs:
        raise UnknownModel("no model to serve: pass --model ID[=PATH] (repeatable) or --demo")
    return specs
