"""The model registry: every FLUX.2 [klein] variant as frozen data, plus local checkpoint directories."""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from pathlib import Path

from kleinserve.errors import InvalidCheckpoint, UnknownModel


class Variant(enum.Enum):
    DISTILLED = "distilled"  # step-distilled: 4 steps, no CFG
    BASE = "base"  # undistilled: CFG against a negative prompt, many steps
    KV = "kv"  # distilled, reference K/V computed once and reused

    @property
    def uses_cfg(self) -> bool:
        return self is Variant.BASE


# diffusers pipeline class named in model_index.json for each variant.
PIPELINE_CLASS = {
    Variant.DISTILLED: "Flux2KleinPipeline",
    Variant.BASE: "Flux2KleinPipeline",
    Variant.KV: "Flux2KleinKVPipeline",
}


@dataclass(frozen=True)
class ModelSpec:
    id: str
    variant: Variant
    hf_repo: str | None  # None for a local checkpoint directory
    local_path: Path | None = None  # a diffusers tree
    transformer_file: Path | None = None  # a BFL single file (bf16 or fp8) in place of the tree's transformer
    size: str | None = None  # "4b" or "9b": the published shapes (engine/architectures.py); None: local
    aliases: tuple[str, ...] = ()
    license: str = ""
    default_steps: int = 4
    min_steps: int = 4
    max_steps: int = 8
    default_guidance: float = 1.0
    default_negative_prompt: str = ""
    max_reference_images: int = 4
    max_images: int = 4
    size_multiple: int = 16
    min_side: int = 64
    max_side: int = 2048
    default_size: tuple[int, int] = (1024, 1024)

    @property
    def uses_cfg(self) -> bool:
        return self.variant.uses_cfg

    @property
    def source(self) -> str:
        tree = str(self.local_path) if self.local_path else f"huggingface:{self.hf_repo}"
        return f"{tree} with transformer {self.transformer_file}" if self.transformer_file else tree


def _defaults_for(variant: Variant) -> dict:
    if variant is Variant.BASE:
        return dict(default_steps=50, min_steps=1, max_steps=100, default_guidance=4.0)
    return dict(default_steps=4, min_steps=4, max_steps=8, default_guidance=1.0)


def _aliases(size: str, kind: str | None, stem: str, hf_repo: str) -> tuple[str, ...]:
    """Spellings seen in the wild (API.md): flux-2-klein-9b, bfl/flux-2-klein-9b, fal-ai/flux-2/klein/9b..."""
    fal = f"fal-ai/flux-2/klein/{size}" + (f"/{kind}" if kind else "")
    names = [
        f"flux-2-klein-{stem}",
        f"flux2-klein-{stem}",
        f"black-forest-labs/flux-2-klein-{stem}",
        f"black-forest-labs/flux.2-klein-{stem}",
        f"bfl/flux-2-klein-{stem}",
        f"bfl/flux.2-klein-{stem}",
        hf_repo,
        fal,
        f"{fal}/edit",
    ]
    if kind == "base":
        names += [f"fal-ai/flux-2/klein/base/{size}", f"fal-ai/flux-2/klein/base/{size}/edit"]
    return tuple(dict.fromkeys(n.lower() for n in names))


def _spec(size: str, kind: str | None, hf_repo: str, license: str) -> ModelSpec:
    variant = {None: Variant.DISTILLED, "base": Variant.BASE, "kv": Variant.KV}[kind]
    stem = {None: size, "base": f"base-{size}", "kv": f"{size}-kv"}[kind]
    return ModelSpec(
        id=f"flux.2-klein-{stem}",
        variant=variant,
        hf_repo=hf_repo,
        size=size,
        aliases=_aliases(size, kind, stem, hf_repo),
        license=license,
        **_defaults_for(variant),
    )


REGISTRY: tuple[ModelSpec, ...] = (
    _spec("4b", None, "black-forest-labs/FLUX.2-klein-4B", "apache-2.0"),
    _spec("9b", None, "black-forest-labs/FLUX.2-klein-9B", "flux-non-commercial"),
    _spec("9b", "kv", "black-forest-labs/FLUX.2-klein-9b-kv", "flux-non-commercial"),
    _spec("4b", "base", "black-forest-labs/FLUX.2-klein-base-4B", "apache-2.0"),
    _spec("9b", "base", "black-forest-labs/FLUX.2-klein-base-9B", "flux-non-commercial"),
)

_BY_NAME: dict[str, ModelSpec] = {
    name.lower(): spec for spec in REGISTRY for name in (spec.id, *spec.aliases)
}


def known_model_ids() -> list[str]:
    return [spec.id for spec in REGISTRY]


def registered_model(name: str) -> ModelSpec | None:
    """The registry model with this id or alias (case-insensitive), or None."""
    return _BY_NAME.get(name.strip().lower())


def resolve_model(name: str) -> ModelSpec:
    """A registry id or alias (case-insensitive), a local checkpoint directory in the diffusers layout, or a
    BFL single-file transformer lying at the root of such a directory (as the official repos ship it)."""
    spec = registered_model(name)
    if spec is not None:
        return spec
    path = Path(name).expanduser()
    if path.is_dir():
        return spec_for_checkpoint_dir(path)
    if path.is_file() and (path.parent / "model_index.json").is_file():
        return dataclasses.replace(spec_for_checkpoint_dir(path.parent), transformer_file=path.resolve())
    if path.is_file():
        raise UnknownModel(
            f"{path} is a single file with no diffusers tree beside it (no model_index.json); say which model"
            f" it is, e.g. --model flux.2-klein-4b={path}, and the rest comes from that model's repo"
        )
    raise UnknownModel(
        f"unknown model '{name}'; known models: {', '.join(known_model_ids())}"
        " (or pass a local checkpoint directory in the diffusers layout)"
    )


def read_variant(checkpoint_dir: Path) -> Variant:
    """The variant a diffusers checkpoint declares in its model_index.json."""
    index_file = checkpoint_dir / "model_index.json"
    if not index_file.is_file():
        raise InvalidCheckpoint(
            f"{checkpoint_dir} is not a diffusers checkpoint: model_index.json is missing"
        )
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidCheckpoint(f"{index_file} is not readable JSON: {exc}") from exc
    pipeline = index.get("_class_name")
    if pipeline == "Flux2KleinKVPipeline":
        return Variant.KV
    if pipeline == "Flux2KleinPipeline":
        return Variant.DISTILLED if index.get("is_distilled", False) else Variant.BASE
    raise InvalidCheckpoint(
        f"{checkpoint_dir} holds a '{pipeline}' checkpoint; kleinserve serves"
        " Flux2KleinPipeline and Flux2KleinKVPipeline checkpoints"
    )


def require_variant(spec: ModelSpec, checkpoint_dir: Path) -> Variant:
    """The checkpoint's variant, which must be `spec`'s (a distilled checkpoint is no 9B-KV model)."""
    found = read_variant(checkpoint_dir)
    if found is not spec.variant:
        raise InvalidCheckpoint(
            f"{checkpoint_dir} holds a {found.value} checkpoint, but {spec.id} is {spec.variant.value}"
        )
    return found


def spec_for_checkpoint_dir(path: Path) -> ModelSpec:
    path = path.resolve()
    variant = read_variant(path)
    return ModelSpec(
        id=path.name,
        variant=variant,
        hf_repo=None,
        local_path=path,
        aliases=(str(path),),
        **_defaults_for(variant),
    )


def with_local_path(spec: ModelSpec, path: Path) -> ModelSpec:
    """The same registry model, with its weights in a known directory, or its transformer in a BFL single
    file (`ID=FILE`: the rest from the diffusers tree the file lies in, else from the model's repo). Never
    mutates `spec`."""
    if path.is_dir() or (not path.exists() and path.suffix != ".safetensors"):
        return dataclasses.replace(spec, local_path=path)
    tree = path.parent if (path.parent / "model_index.json").is_file() else spec.local_path
    return dataclasses.replace(spec, local_path=tree, transformer_file=path)
