"""The fal dialect's wire schemas: the input every endpoint takes (validated with FalInput on the distilled
and KV endpoints, FalBaseInput on the Base ones, and documented by both in /openapi.json), the output, and
the queue's answers.

The Base endpoints take fal's own Base defaults and limits (28 steps of 4..50, guidance 5 of 0..20), not
the model's diffusers defaults the OpenAI dialect uses (50 steps, 4.0), and fal's `acceleration`, which is
accepted and does not change the computation (kleinserve is pixel-exact against diffusers; its speed levers
are server flags). A field fal does not document for an endpoint is ignored, as fal ignores it.

FalInput's fields are declared in the order they are checked (the first wrong one answers): the output
size and options, the reference images (which depend on the endpoint: the validation context carries it),
the prompt. Limits that depend on the model (num_images, steps, guidance, seed + n, the size's sides) are
build_request's, checked before any reference image is downloaded.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kleinserve.api.dialect_request import MAX_SEED, PROMPT, Checked, sent
from kleinserve.api.errors import invalid
from kleinserve.imaging import OUTPUT_FORMATS
from kleinserve.models import ModelSpec
from kleinserve.request import MAX_LORA_SCALE, MAX_LORAS

PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
DEFAULT_PRESET = "landscape_4_3"
FAL_FORMATS = Literal[tuple(OUTPUT_FORMATS)]  # png, jpeg, webp
# fal's Base endpoints (fal-ai/flux-2/klein/{4b,9b}/base[/edit]): (default, lowest, highest)
BASE_STEPS = (28, 4, 50)
BASE_GUIDANCE = (5.0, 0.0, 20.0)
ACCELERATIONS = ("none", "regular", "high")
ACCELERATION_NOTE = (
    "accepted for compatibility with fal (none, regular or high) and ignored: it does not change the "
    "computation, so the image is the one num_inference_steps gives, pixel for pixel (kleinserve's own "
    "speed levers are server flags)"
)


# --- checks ----------------------------------------------------------------------------------------


def step_range(spec: ModelSpec) -> tuple[int, int]:
    """The steps `spec`'s fal endpoints take: fal's Base range on Base models, else the model's own."""
    return (BASE_STEPS[1], BASE_STEPS[2]) if spec.uses_cfg else (spec.min_steps, spec.max_steps)


def _image_size(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in PRESETS:
            raise invalid("image_size", f"unknown preset {value!r}; use one of {', '.join(PRESETS)} "
                          'or {"width": W, "height": H}')  # fmt: skip
        return value
    if isinstance(value, dict) and set(value) <= {"width", "height"}:
        return value  # build_request checks the sides
    raise invalid("image_size", f'must be a preset name or {{"width": W, "height": H}}, got {value!r}')


def image_sides(value: Any, edit: bool) -> tuple[Any, Any]:
    """A checked `image_size` -> (width, height); left out, an edit takes its first input's size."""
    if value is None:
        return (None, None) if edit else PRESETS[DEFAULT_PRESET]
    if isinstance(value, str):
        return PRESETS[value]
    return value.get("width"), value.get("height")


def _output_format(value: Any) -> str:
    if not isinstance(value, str) or value not in OUTPUT_FORMATS:
        raise invalid("output_format", f"must be one of {', '.join(sorted(OUTPUT_FORMATS))}; got {value!r}")
    return value


def boolean(name: str):
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise invalid(name, f"must be true or false, got {value!r}")
        return value

    return check


def in_range(name: str, low: float, high: float, *, integer: bool):
    """A Base endpoint's steps or guidance: a number (an integer for steps) from `low` to `high`."""
    kind = "an integer" if integer else "a number"

    def check(value: Any) -> int | float:
        if not _is_number(value, integer) or not low <= value <= high:
            got = repr(value)[:40]
            raise invalid(name, f"must be {kind} from {low:g} to {high:g} on Base endpoints, got {got}")
        return int(value) if integer else float(value)

    return check


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return True
    return math.isfinite(value) and (value.is_integer() or not integer)


_base_steps = in_range("num_inference_steps", *BASE_STEPS[1:], integer=True)
_base_guidance = in_range("guidance_scale", *BASE_GUIDANCE[1:], integer=False)


def _acceleration(value: Any) -> str:
    if value not in ACCELERATIONS:
        raise invalid("acceleration", f"must be one of {', '.join(ACCELERATIONS)}; got {repr(value)[:40]}")
    return value


def _image_urls(value: Any, info) -> Any:
    """`image_urls`, or one `image_url` (what @ai-sdk/fal sends): only on edit endpoints, and there one
    of them. The context names the endpoint, whether it edits, and how many references its model takes."""
    single, endpoint, limit = info.data.get("image_url"), info.context["endpoint"], info.context["max_images"]
    if not info.context["edit"]:
        if value or single is not None:  # "image_url": "" too: never dropped in silence
            name = "image_urls" if value else "image_url"
            raise invalid(name, f"only edit endpoints take reference images; POST to {endpoint}/edit")
        return value
    if single is not None:
        if value is not None:
            raise invalid("image_url", "give the reference images as image_urls or one image_url, not both")
        if not isinstance(single, str):
            raise invalid("image_url", f"must be one image URL or data URI, got {repr(single)[:80]}")
        return value
    if value is None:
        raise invalid("image_urls", f"is required by {endpoint}: give 1 to {limit} image URLs or data URIs")
    if not isinstance(value, list) or not value or len(value) > limit:
        got = f"{len(value)} URLs" if isinstance(value, list) else repr(value)[:80]
        raise invalid("image_urls", f"must be a list of 1 to {limit} image URLs or data URIs, got {got}")
    return value


def _prompt(value: Any) -> Any:
    if value is None:
        raise invalid("prompt", "field required: describe the image you want")
    return value  # build_request checks the text


# --- input -----------------------------------------------------------------------------------------


class ImageSize(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(ge=64, le=2048, multiple_of=16)
    height: int = Field(ge=64, le=2048, multiple_of=16)


class FalInput(BaseModel):
    """fal input on the distilled and KV endpoints, fal-ai/flux-2/klein/{4b,9b}[/edit] and
    fal-ai/flux-2/klein/9b/kv[/edit] (text-to-image; edits add image_urls or image_url)."""

    model_config = ConfigDict(extra="allow")
    image_size: Annotated[
        Literal["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]
        | ImageSize
        | None,
        Checked(_image_size),
    ] = Field(None, description=f"left out: {DEFAULT_PRESET}, or on edit endpoints the first input's size")
    output_format: Annotated[FAL_FORMATS, Checked(_output_format)] = "png"
    sync_mode: Annotated[bool, Checked(boolean("sync_mode"))] = Field(
        False, description="images as data URIs, nothing stored"
    )
    enable_safety_checker: Annotated[bool, Checked(boolean("enable_safety_checker"))] = True
    image_url: Annotated[str | None, Checked()] = Field(
        None, description="edit endpoints: one image (what @ai-sdk/fal sends)"
    )
    image_urls: Annotated[list[str] | None, Checked(_image_urls, with_info=True)] = Field(
        None, min_length=1, max_length=4, description="edit endpoints", validate_default=True
    )
    prompt: Annotated[str, Checked(_prompt)] = PROMPT
    num_images: Annotated[int | None, Checked()] = Field(None, ge=1, le=4)
    seed: Annotated[int | None, Checked()] = Field(None, ge=0, le=MAX_SEED)
    num_inference_steps: Annotated[int | None, Checked()] = Field(None, ge=4, le=8, description="left out: 4")
    guidance_scale: Annotated[float | None, Checked()] = Field(
        None, description="Base endpoints only: a distilled model's is fixed at 1.0 (any other is a 422)"
    )
    negative_prompt: Annotated[str | None, Checked()] = Field(
        None, description="Base endpoints only: a distilled model takes none (a non-empty one is a 422)"
    )

    @property
    def sends_one_image(self) -> bool:
        """One reference as `image_url` (`"image_url": null` sends none)."""
        return self.image_url is not None

    def reference_urls(self, edit: bool) -> list[str]:
        """The checked reference image URLs (none for text-to-image)."""
        if not edit:
            return []
        return [self.image_url] if self.sends_one_image else self.image_urls

    def request_fields(self) -> dict[str, Any]:
        """The fields build_request reads: those sent (one left out takes the model's default)."""
        return sent(self)


class FalBaseInput(FalInput):
    """fal input on the Base endpoints, fal-ai/flux-2/klein/{4b,9b}/base[/edit]: fal's Base defaults and
    limits (the OpenAI dialect keeps the model's own, 50 steps and guidance 4), and `acceleration`."""

    num_inference_steps: Annotated[int, Checked(_base_steps)] = Field(
        BASE_STEPS[0], ge=BASE_STEPS[1], le=BASE_STEPS[2]
    )
    guidance_scale: Annotated[float, Checked(_base_guidance)] = Field(
        BASE_GUIDANCE[0], ge=BASE_GUIDANCE[1], le=BASE_GUIDANCE[2], description="classifier-free guidance"
    )
    negative_prompt: Annotated[str, Checked()] = Field("", description="what to steer away from")
    acceleration: Annotated[Literal["none", "regular", "high"], Checked(_acceleration)] = Field(
        "regular", description=ACCELERATION_NOTE
    )

    def request_fields(self) -> dict[str, Any]:
        """fal's Base defaults stand in for the steps and guidance left out; acceleration changes nothing."""
        return {**sent(self), "num_inference_steps": self.num_inference_steps,
                "guidance_scale": self.guidance_scale}  # fmt: skip


class LoraWeight(BaseModel):
    """One LoRA (fal's LoRAWeight): where it comes from and how strongly it applies."""

    path: str = Field(
        description="an http(s) URL of a .safetensors file, a file name in the server's --lora-dir, or a "
        "Hugging Face repo id owner/repo[/file.safetensors]"
    )
    scale: float = Field(1.0, ge=0, le=MAX_LORA_SCALE, description="how strongly it applies")


LORAS = Field(
    None, max_length=MAX_LORAS, description=f"up to {MAX_LORAS} LoRAs applied to this request's images"
)


class FalLoraInput(FalInput):
    """fal-ai/flux-2/klein/{4b,9b}/lora and /edit/lora: the distilled input plus `loras`."""

    loras: Annotated[list[LoraWeight] | None, Checked()] = LORAS  # build_request checks the entries


class FalBaseLoraInput(FalBaseInput):
    """fal-ai/flux-2/klein/{4b,9b}/base/lora and /base/edit/lora: the Base input plus `loras`."""

    loras: Annotated[list[LoraWeight] | None, Checked()] = LORAS


def input_schema(uses_cfg: bool, lora: bool) -> type[FalInput]:
    """The body an endpoint takes: Base or distilled, with or without LoRAs."""
    if lora:
        return FalBaseLoraInput if uses_cfg else FalLoraInput
    return FalBaseInput if uses_cfg else FalInput


# --- answers ---------------------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FalImage(_Open):
    url: str
    content_type: str
    width: int
    height: int


class FalOutput(_Open):
    images: list[FalImage]
    seed: int
    has_nsfw_concepts: list[bool]


class QueueSubmitted(_Open):
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    queue_position: int


class QueueStatus(_Open):
    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    request_id: str
    logs: list[dict[str, Any]] | None


class CancelAnswer(_Open):
    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED"]
