"""Replicate's names for the klein models (black-forest-labs/flux-2-klein-4b ...), the served model each
names, one version id per model, and the output size Replicate's `aspect_ratio` + `output_megapixels` give."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime

from kleinserve.api.errors import ApiError
from kleinserve.errors import ModelNotServed
from kleinserve.service.facade import ImageService
from kleinserve.service.served_models import ServedModel

OWNER = "black-forest-labs"
# Replicate's model name -> the kleinserve model id it runs
PLAIN_MODELS = {
    "flux-2-klein-4b": "flux.2-klein-4b",
    "flux-2-klein-9b": "flux.2-klein-9b",
    "flux-2-klein-base-4b": "flux.2-klein-base-4b",
    "flux-2-klein-base-9b": "flux.2-klein-base-9b",
}
# The same models taking a LoRA (input.lora_weights, lora_scale), named as Replicate names its LoRA models
# (black-forest-labs/flux-dev-lora); no klein LoRA model of Replicate's own was found to copy.
LORA_SUFFIX = "-lora"
MODELS = {**PLAIN_MODELS, **{f"{name}{LORA_SUFFIX}": model for name, model in PLAIN_MODELS.items()}}
MAX_SIDE = 2048
VERSION_CREATED = datetime(2026, 1, 15, tzinfo=UTC).isoformat()


def version_id(name: str) -> str:
    """The one version of a model here: a stable 64-hex id, as Replicate's version ids look."""
    return hashlib.sha256(f"kleinserve/{OWNER}/{name}".encode()).hexdigest()


def takes_lora(name: str) -> bool:
    """Whether Replicate's model `name` (without its owner) takes a LoRA."""
    return name.endswith(LORA_SUFFIX)


def replicate_name(served: ServedModel) -> str | None:
    """`owner/name` of a served model on Replicate; None when Replicate has no such model."""
    name = next((n for n, model_id in MODELS.items() if model_id == served.spec.id), None)
    return None if name is None else f"{OWNER}/{name}"


def served_model(service: ImageService, owner: str, name: str) -> ServedModel:
    """The served model `owner/name` names; a 404 naming what this server runs."""
    if owner != OWNER or name not in MODELS:
        raise ApiError(404, f"model {owner}/{name} is not one this server runs; {_served(service)}",
                       code="model_not_found")  # fmt: skip
    try:
        return service.model(MODELS[name])
    except ModelNotServed:
        message = f"{owner}/{name} runs {MODELS[name]}, which this server does not serve; {_served(service)}"
        raise ApiError(404, message, code="model_not_found") from None


def by_version(service: ImageService, version: str) -> tuple[ServedModel, str]:
    """`owner/name:id` or a bare id -> (served model, owner/name); 404 for a version this server lacks."""
    named, _, given = version.rpartition(":")
    served_ids = {served.spec.id: served for served in service.models}
    for name, model_id in MODELS.items():
        full = f"{OWNER}/{name}"
        if model_id in served_ids and given == version_id(name) and named in ("", full):
            return served_ids[model_id], full
    message = f"version {version!r} not found; {_served(service)} (see GET /v1/models/... latest_version)"
    raise ApiError(404, message, code="version_not_found")


def _served(service: ImageService) -> str:
    names = [n for n in (replicate_name(s) for s in service.models) if n]
    return f"it serves {', '.join(names)}" if names else "it serves no Replicate model"


def output_size(aspect_ratio: str | None, megapixels: str | None, reference=None) -> tuple[int, int]:
    """Replicate's aspect_ratio (default 1:1; match_input_image: the first reference's) at
    output_megapixels (default "1", of 1024x1024 pixels), in multiples of 16, each side at most 2048."""
    if aspect_ratio == "match_input_image" and reference is not None:
        ratio = reference.width / reference.height
    else:
        across, down = (aspect_ratio or "1:1").replace("match_input_image", "1:1").split(":")
        ratio = int(across) / int(down)
    area = float(megapixels or "1") * 1024 * 1024
    width, height = math.sqrt(area * ratio), math.sqrt(area / ratio)
    scale = min(1.0, MAX_SIDE / max(width, height))  # a long side past the limit: both shrink, aspect kept
    return _sixteen(width * scale), _sixteen(height * scale)


def _sixteen(side: float) -> int:
    return min(MAX_SIDE, max(64, int(side // 16) * 16))
