"""The OpenAI Images dialect's wire schemas: the bodies of POST /v1/images/generations (JSON) and
/v1/images/edits (multipart/form-data, or JSON with image URLs), which the routes validate with these
models and /openapi.json documents from them, and the answers.

Fields are declared in the order they are checked (the first wrong one answers): first the names
(`check_names`: unknown parameters, and the OpenAI ones klein cannot honour), then `model`, then the output
options, then the request fields. Numbers may come as text (multipart form fields, or JSON strings): their
checks convert them. Limits that depend on the model (n, steps, guidance, seed + n, size) are build_request's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kleinserve.api.dialect_request import MAX_SEED, PROMPT, Checked
from kleinserve.api.errors import invalid
from kleinserve.imaging import FORMAT_NAMES
from kleinserve.request import MAX_LORA_SCALE, MAX_LORAS, parse_size

RESPONSE_FORMATS = ("url", "b64_json")
QUALITIES = ("auto", "low", "medium", "high", "standard", "hd")
SUPPORTED = {
    "prompt", "model", "n", "size", "response_format", "output_format", "output_compression",
    "seed", "num_inference_steps", "guidance_scale", "negative_prompt", "quality", "stream", "partial_images",
    "loras",
}  # fmt: skip
# OpenAI parameters that do not change what this model does: accepted and ignored.
IGNORED = {"style", "moderation", "user", "safety_identifier", "input_fidelity", "complexity"}
SIDES = "|".join(str(side) for side in range(64, 2049, 16))
SIZE_PATTERN = rf"^(auto|({SIDES})x({SIDES}))$"
OPENAI_FORMATS = Literal[tuple(FORMAT_NAMES)]  # png, jpeg, jpg, webp (imaging's one table)


# --- checks ----------------------------------------------------------------------------------------


def check_names(fields: dict, declared: Collection[str] = ()) -> dict:
    """Every parameter is one we take or knowingly ignore; `background` and `mask` only with values klein
    can honour. Checked in the body's order, before anything else."""
    for name, value in fields.items():
        if name in SUPPORTED or name in IGNORED:
            continue
        if name == "background":
            if value == "transparent":
                raise invalid(
                    "background",
                    "transparent backgrounds are not supported: FLUX.2 [klein] has no alpha; "
                    "use 'opaque' or 'auto'",
                )
            continue
        if name == "mask":
            raise invalid(
                "mask", "masks are not supported by FLUX.2 [klein]; describe the edit in the prompt"
            )
        if name in declared:  # the edit form's `image` (its files)
            continue
        raise invalid(name, f"unknown parameter; supported: {', '.join(sorted(SUPPORTED))}")
    return fields


def optional_str(name: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is not None and not isinstance(value, str):
            raise invalid(name, f"must be a string, got {type(value).__name__}")
        return value

    return check


def _model(value: Any, info) -> str | None:
    """A model name (left out: the server's first model); `served`, the route's lookup in the validation
    context, finds it (a 404 if not served) and reports it for per-model stats."""
    value = optional_str("model")(value)
    info.context["served"](value)
    return value


def number(name: str, kind: type[int] | type[float]) -> Callable[[Any], Any]:
    """JSON numbers pass through (build_request checks them); numbers sent as text are converted."""

    def check(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return kind(value.strip())
        except ValueError:
            raise invalid(
                name, f"must be {'an integer' if kind is int else 'a number'}, got {value!r}"
            ) from None

    return check


def choice(name: str, choices: Collection[str], default: str | None, expected: str, *, fold_case=False):
    """A field that takes one of `choices` (a dict also says what each means); `default` when null."""

    def check(value: Any) -> str | None:
        if value is None:
            return default
        key = value.lower() if fold_case and isinstance(value, str) else value
        if not isinstance(value, str) or key not in choices:
            raise invalid(name, f"must be {expected}, got {value!r}")
        return choices[key] if isinstance(choices, dict) else key

    return check


def _compression(value: Any) -> int | None:
    value = number("output_compression", int)(value)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100):
        raise invalid("output_compression", f"must be an integer from 0 to 100, got {value!r}")
    return value


def _prompt(value: Any) -> Any:
    if value is None:
        raise invalid("prompt", "is required; describe the image you want")
    return value  # build_request checks the text


def size_sides(value: Any) -> tuple[int | None, int | None]:
    """`size` -> (width, height); (None, None) for 'auto' or left out (the model's default, or an edit's
    first image's size)."""
    if value is None or value == "auto":
        return None, None
    if not isinstance(value, str):
        raise invalid("size", f"must be a string like '1024x768' or 'auto', got {value!r}")
    return parse_size(value, "size")  # InvalidRequest: a 400 naming size


def _loras(value: Any) -> Any:
    """A list of {path, scale}; in a multipart form, that list as JSON text. build_request checks entries."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise invalid(
                "loras", 'must be a JSON list like [{"path": "style.safetensors", "scale": 1}]'
            ) from None
    return value


def _size(value: Any) -> Any:
    size_sides(value)
    return value


def _stream(value: Any) -> bool | None:
    """true / false (a multipart form sends them as text)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise invalid("stream", f"must be a boolean (true or false), got {value!r}")


def _partial_images(value: Any) -> int | None:
    value = number("partial_images", int)(value)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3):
        raise invalid("partial_images", f"must be an integer from 0 to 3 (with stream: true), got {value!r}")
    return value


def _images(value: Any, info) -> list[dict]:
    """A JSON edit's `images`: 1 to the model's limit of {"image_url": "<https or data: URL>"}."""
    limit = info.context.get("max_images", 4)
    if not isinstance(value, list) or not value:
        shape = '{"image_url": "<https or data: URL>"}'
        raise invalid("images", f"must be a list of 1 to {limit} {shape} objects")
    if len(value) > limit:
        raise invalid(
            "images", f"{len(value)} images given; FLUX.2 [klein] takes 1 to {limit} reference images"
        )
    for index, item in enumerate(value):
        _image_reference(item, f"images[{index}]")
    return value


def _image_reference(item: Any, name: str) -> None:
    if not isinstance(item, dict):
        raise invalid(name, f'must be an object {{"image_url": "<https or data: URL>"}}, got {item!r}')
    if "file_id" in item:
        raise invalid(f"{name}.file_id", "file ids are not supported (no Files API); send image_url")
    if set(item) != {"image_url"}:
        raise invalid(name, f'takes only "image_url", got {", ".join(sorted(item)) or "nothing"}')
    if not isinstance(item["image_url"], str):
        raise invalid(f"{name}.image_url", "must be an https URL or a data: URL string")


# --- bodies ----------------------------------------------------------------------------------------


class LoraWeight(BaseModel):
    path: str = Field(description="an http(s) URL, a file name in --lora-dir, or a Hugging Face repo id")
    scale: float = Field(1.0, ge=0, le=MAX_LORA_SCALE)


class _ImageFields(BaseModel):
    """What generations and edits share, in the order it is checked."""

    model: Annotated[str | None, Checked(_model, with_info=True)] = Field(
        None, description="left out: the server's first model", validate_default=True
    )
    response_format: Annotated[
        Literal["url", "b64_json"] | None,
        Checked(choice("response_format", RESPONSE_FORMATS, None, "'url' or 'b64_json'")),
    ] = Field(None, description="left out: both url and b64_json")
    output_format: Annotated[
        OPENAI_FORMATS | None,
        Checked(choice("output_format", FORMAT_NAMES, "png", "png, jpeg or webp", fold_case=True)),
    ] = "png"
    output_compression: Annotated[int | None, Checked(_compression)] = Field(None, ge=0, le=100)
    quality: Annotated[
        Literal["auto", "low", "medium", "high", "standard", "hd"] | None,
        Checked(choice("quality", QUALITIES, "auto", f"one of {', '.join(QUALITIES)}")),
    ] = "auto"
    prompt: Annotated[str, Checked(_prompt)] = PROMPT
    n: Annotated[int | None, Checked(number("n", int))] = Field(None, ge=1, le=4)
    size: Annotated[str | None, Checked(_size)] = Field(None, pattern=SIZE_PATTERN)
    num_inference_steps: Annotated[int | None, Checked(number("num_inference_steps", int))] = Field(
        None, ge=4, le=8, description="4..8 distilled, 1..100 Base"
    )
    guidance_scale: Annotated[float | None, Checked(number("guidance_scale", float))] = Field(
        None, description="Base models only (0..30)"
    )
    seed: Annotated[int | None, Checked(number("seed", int))] = Field(None, ge=0, le=MAX_SEED)
    negative_prompt: Annotated[str | None, Checked(optional_str("negative_prompt"))] = Field(
        None, description="Base models only"
    )
    loras: Annotated[list[LoraWeight] | None, Checked(_loras)] = Field(
        None,
        max_length=MAX_LORAS,
        description=f"up to {MAX_LORAS} LoRAs {{path, scale}} (a kleinserve extension; JSON text in a form)",
    )
    # accepted for compatibility (check_names refuses the values klein cannot honour), otherwise ignored
    stream: Annotated[bool | None, Checked(_stream)] = Field(
        None, description="true: server-sent events (partial images, then the image), OpenAI's shapes"
    )
    partial_images: Annotated[int | None, Checked(_partial_images)] = Field(
        None, ge=0, le=3, description="with stream: previews sent before the image (default 0)"
    )
    background: Annotated[Literal["auto", "opaque"] | None, Checked()] = None
    style: Annotated[str | None, Checked()] = None
    moderation: Annotated[str | None, Checked()] = None
    user: Annotated[str | None, Checked()] = None
    safety_identifier: Annotated[str | None, Checked()] = None
    input_fidelity: Annotated[str | None, Checked()] = None
    complexity: Annotated[str | None, Checked()] = None

    @model_validator(mode="before")
    @classmethod
    def _names(cls, fields: Any) -> Any:
        return check_names(fields, cls.model_fields) if isinstance(fields, dict) else fields


class ImagesRequest(_ImageFields):
    """POST /v1/images/generations (JSON)."""

    model_config = ConfigDict(extra="forbid")


class EditForm(_ImageFields):
    """POST /v1/images/edits (multipart/form-data): the same fields as text parts, and 1..4 images."""

    # the files are read and decoded by multipart.py; here they are only documented

    image: Annotated[list[bytes], Checked()] = Field(
        min_length=1, max_length=4, json_schema_extra={"items": {"type": "string", "format": "binary"}}
    )


class ImageReference(BaseModel):
    image_url: str = Field(description="an https URL or a data: URL (file_id is not supported)")


class EditJson(_ImageFields):
    """POST /v1/images/edits (application/json): the same fields, and 1..4 images by URL."""

    model_config = ConfigDict(extra="forbid")

    # checked last (after the model: its limit); the routes fetch them only once every field is checked
    images: Annotated[list[ImageReference], Checked(_images, with_info=True)] = Field(
        min_length=1, max_length=4
    )


# --- answers ---------------------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class OpenAIImage(_Open):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(_Open):
    created: int
    data: list[OpenAIImage]
    usage: dict[str, Any] | None = None
