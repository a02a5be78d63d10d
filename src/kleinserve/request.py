"""GenerationRequest / GenerationResult: the one internal request type, validated once against a ModelSpec.

Every API dialect and the CLI turn their input into keyword arguments for `build_request`; nothing
downstream checks again. Errors are `InvalidRequest(field, message)` with a message a user can act on.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from kleinserve.errors import InvalidRequest
from kleinserve.models import ModelSpec

MAX_PROMPT_CHARS = 32_000
MAX_SEED = 2**64 - 1
REFERENCE_MAX_AREA = 1024 * 1024
REFERENCE_MIN_SIDE = 64
REFERENCE_MAX_ASPECT = 8.0
MAX_GUIDANCE = 30.0
MAX_LORAS = 3
MAX_LORA_SCALE = 4.0
ENGINE_STAGES = ("lora", "text", "references", "denoise", "decode")  # a batch's time on the engine


@dataclass(frozen=True)
class OutputOptions:
    """How a job's images are encoded and kept (chosen by the dialect, carried with the job)."""

    format: str = "png"  # png | jpeg | webp
    quality: int | None = None  # jpeg/webp quality 0..100; None: 90
    store: bool = True  # False: images only come back inline; nothing is written
    safety_check: bool = False  # run the safety checker on each image


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA a request asks for: where it comes from (an http(s) URL, a file name in the server's LoRA
    folder, a Hugging Face repo id) and how strongly it applies."""

    path: str
    scale: float = 1.0


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    num_images: int = 1
    images: tuple[Image.Image, ...] = ()  # reference images for editing, RGB-convertible PIL images
    negative_prompt: str = ""
    loras: tuple[LoraChoice, ...] = ()  # applied to this request's images only


@dataclass
class GenerationResult:
    images: list[Any]  # uint8 HxWx3 arrays, PIL images or float arrays in [0, 1], as asked
    seed: int
    width: int
    height: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, for the batch it ran in
    text_tokens: int = 0  # prompt tokens the text encoder saw (+ the negative prompt's under CFG)
    batch_images: int = 0  # images in the batch it ran in (0: only its own)

    @property
    def engine_seconds(self) -> float:
        """Its share, by images, of its batch's time on the engine."""
        batch = sum(self.timings.get(stage, 0.0) for stage in ENGINE_STAGES)
        return batch * len(self.images) / max(self.batch_images, len(self.images), 1)


def reference_resize_size(width: int, height: int) -> tuple[int, int]:
    """A reference image's size after its area is capped at 1 MP (aspect kept)."""
    if width * height <= REFERENCE_MAX_AREA:
        return width, height
    scale = math.sqrt(REFERENCE_MAX_AREA / (width * height))
    return int(width * scale), int(height * scale)


def reference_image_size(width: int, height: int) -> tuple[int, int]:
    """The size a reference image is encoded at: capped at 1 MP, then center-cropped to multiples of 16."""
    width, height = reference_resize_size(width, height)
    return (width // 16) * 16, (height // 16) * 16


def parse_size(text: str, field_name: str = "size") -> tuple[int, int]:
    """'1024x768' -> (1024, 768). Range checks happen in build_request."""
    parts = text.strip().lower().replace("*", "x").split("x") if isinstance(text, str) else []
    if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise InvalidRequest(field_name, f"'{text}' is not a size; write it as WIDTHxHEIGHT, e.g. 1024x768")
    return int(parts[0]), int(parts[1])


def build_request(
    spec: ModelSpec,
    *,
    prompt: Any,
    images: Sequence[Any] = (),
    width: Any = None,
    height: Any = None,
    steps: Any = None,
    guidance: Any = None,
    seed: Any = None,
    num_images: Any = 1,
    negative_prompt: Any = None,
    loras: Any = None,
) -> GenerationRequest:
    """Normalize and validate user input against `spec`; fill defaults; pick a seed if none is given."""
    images = _check_images(spec, images)
    num_images = _check_int("num_images", num_images, 1, spec.max_images)
    width, height = _check_size(spec, width, height, images)
    return GenerationRequest(
        prompt=_check_prompt(prompt),
        width=width,
        height=height,
        steps=_check_int(
            "steps", spec.default_steps if steps is None else steps, spec.min_steps, spec.max_steps
        ),
        guidance=_check_guidance(spec, guidance),
        seed=_check_seed(seed, num_images),
        num_images=num_images,
        images=images,
        negative_prompt=_check_negative_prompt(spec, negative_prompt),
        loras=check_loras(loras),
    )


def _check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise InvalidRequest("prompt", f"must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise InvalidRequest("prompt", "must not be empty; describe the image you want")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest("prompt", f"is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    if "\x00" in prompt:
        raise InvalidRequest("prompt", "must not contain NUL characters")
    _check_unicode("prompt", prompt)
    return prompt


def _check_unicode(name: str, text: str) -> None:
    """Lone UTF-16 surrogates (JSON "\\ud800") are not text: no tokenizer or JSON encoder takes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            name,
            f"has an invalid character at position {exc.start} (a lone UTF-16 surrogate); send valid Unicode",
        ) from None


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidRequest(name, f"must be an integer from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(name, f"must be from {low} to {high}, got {value}")
    return value


def _check_images(spec: ModelSpec, images: Sequence[Any]) -> tuple[Image.Image, ...]:
    if images is None:
        return ()
    images = (images,) if isinstance(images, Image.Image) else tuple(images)
    if len(images) > spec.max_reference_images:
        raise InvalidRequest(
            "images",
            f"{len(images)} reference images given; {spec.id} takes at most {spec.max_reference_images}",
        )
    for index, image in enumerate(images):
        name = f"images[{index}]"
        if not isinstance(image, Image.Image):
            raise InvalidRequest(name, f"must be an image, got {type(image).__name__}")
        w, h = image.size
        if w < REFERENCE_MIN_SIDE or h < REFERENCE_MIN_SIDE:
            raise InvalidRequest(name, f"is {w}x{h}; both sides must be at least {REFERENCE_MIN_SIDE} pixels")
        if max(w / h, h / w) > REFERENCE_MAX_ASPECT:
            raise InvalidRequest(
                name, f"is {w}x{h}; the aspect ratio must be at most {REFERENCE_MAX_ASPECT:g}:1"
            )
    return images


def _check_size(spec: ModelSpec, width: Any, height: Any, images: tuple) -> tuple[int, int]:
    if width is None and height is None:
        if images:
            return _fit_to_limits(spec, *reference_image_size(*images[0].size))
        return spec.default_size
    if width is None or height is None:
        missing = "width" if width is None else "height"
        raise InvalidRequest(missing, "give both width and height, or neither")
    return _check_side(spec, "width", width), _check_side(spec, "height", height)


def _check_side(spec: ModelSpec, name: str, value: Any) -> int:
    allowed = f"multiples of {spec.size_multiple} from {spec.min_side} to {spec.max_side}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(name, f"must be an integer ({allowed}), got {value!r}")
    if not spec.min_side <= value <= spec.max_side:
        raise InvalidRequest(name, f"{value} is out of range; allowed: {allowed}")
    if value % spec.size_multiple:
        lower = value - value % spec.size_multiple
        hint = (
            f"use {lower} or {lower + spec.size_multiple}" if lower >= spec.min_side else "use a larger size"
        )
        raise InvalidRequest(name, f"{value} is not a multiple of {spec.size_multiple}; {hint} ({allowed})")
    return value


def _fit_to_limits(spec: ModelSpec, width: int, height: int) -> tuple[int, int]:
    """A size taken from a reference image, scaled down (aspect kept) if a side exceeds the maximum."""
    scale = min(1.0, spec.max_side / max(width, height))
    m = spec.size_multiple
    width = max(spec.min_side, int(width * scale) // m * m)
    height = max(spec.min_side, int(height * scale) // m * m)
    return width, height


def _check_guidance(spec: ModelSpec, guidance: Any) -> float:
    if guidance is None:
        return spec.default_guidance
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise InvalidRequest("guidance", f"must be a number, got {guidance!r}")
    if not spec.uses_cfg:
        if guidance != 1.0:
            raise InvalidRequest(
                "guidance",
                f"{spec.id} is step-distilled and has no guidance (it is fixed at 1.0);"
                " leave it out, or use a Base model for CFG",
            )
        return 1.0
    if not 0.0 <= guidance <= MAX_GUIDANCE:
        raise InvalidRequest("guidance", f"must be from 0 to {MAX_GUIDANCE:g}, got {guidance}")
    return float(guidance)


def _check_seed(seed: Any, num_images: int) -> int:
    if seed is None:
        return random.SystemRandom().randrange(2**32)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidRequest("seed", f"must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    if not 0 <= seed <= MAX_SEED - (num_images - 1):
        raise InvalidRequest("seed", f"must be from 0 to {MAX_SEED - (num_images - 1)}, got {seed}")
    return seed


def _check_negative_prompt(spec: ModelSpec, negative_prompt: Any) -> str:
    if negative_prompt is None:
        return spec.default_negative_prompt
    if not isinstance(negative_prompt, str):
        raise InvalidRequest("negative_prompt", f"must be a string, got {type(negative_prompt).__name__}")
    if negative_prompt and not spec.uses_cfg:
        raise InvalidRequest(
            "negative_prompt", f"{spec.id} is step-distilled and ignores negative prompts; use a Base model"
        )
    if len(negative_prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest("negative_prompt", f"is longer than {MAX_PROMPT_CHARS} characters")
    _check_unicode("negative_prompt", negative_prompt)
    return negative_prompt


def check_loras(loras: Any) -> tuple[LoraChoice, ...]:
    """[{path, scale}] (or LoraChoice) -> LoraChoices: at most MAX_LORAS, each scale 0..MAX_LORA_SCALE."""
    if loras is None:
        return ()
    if not isinstance(loras, (list, tuple)):
        raise InvalidRequest(
            "loras", f"must be a list of {{path, scale}} objects, got {type(loras).__name__}"
        )
    if len(loras) > MAX_LORAS:
        raise InvalidRequest("loras", f"{len(loras)} LoRAs given; at most {MAX_LORAS} apply to one request")
    return tuple(_check_lora(index, lora) for index, lora in enumerate(loras))


def _check_lora(index: int, lora: Any) -> LoraChoice:
    if isinstance(lora, LoraChoice):
        lora = {"path": lora.path, "scale": lora.scale}
    if not isinstance(lora, dict):
        raise InvalidRequest(
            f"loras[{index}]", f"must be an object {{path, scale}}, got {type(lora).__name__}"
        )
    path, scale = lora.get("path"), lora.get("scale", 1.0)
    if not isinstance(path, str) or not path.strip():
        raise InvalidRequest(
            f"loras[{index}].path",
            "must be a LoRA's http(s) URL, a file name in the server's LoRA folder or a Hugging Face repo id",
        )
    if len(path) > 2048 or "\x00" in path:
        raise InvalidRequest(f"loras[{index}].path", "is longer than 2048 characters or holds a NUL")
    _check_unicode(f"loras[{index}].path", path)
    if scale is None:
        scale = 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise InvalidRequest(
            f"loras[{index}].scale", f"must be a number from 0 to {MAX_LORA_SCALE:g}, got {scale!r}"
        )
    if not 0.0 <= scale <= MAX_LORA_SCALE:
        raise InvalidRequest(f"loras[{index}].scale", f"must be from 0 to {MAX_LORA_SCALE:g}, got {scale:g}")
    return LoraChoice(path.strip(), float(scale))
