"""Replicate's wire schemas: the klein models' `input` (ReplicateInput, ReplicateBaseInput for the Base
models, which add `guidance`), the body of POST /v1/predictions and /v1/models/{owner}/{name}/predictions,
the prediction object, a page of predictions, a model and its version, and the error shape (problem+json:
`{"title", "detail", "status"}`, which replicate-python's ReplicateError and @ai-sdk/replicate read).

Input fields are named `input.<field>` in errors, as Replicate's `invalid_fields` name them. Fields are
declared in the order they are checked (the first wrong one answers); limits that depend on the model
(guidance, steps) are build_request's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kleinserve.api.dialect_request import MAX_SEED, Checked, choice, integer_in, number, text
from kleinserve.api.errors import invalid
from kleinserve.request import MAX_LORA_SCALE

MAX_IMAGES = 4  # Replicate takes 5; the engine takes 4 references
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "3:2", "2:3", "4:3", "3:4", "5:4", "4:5", "21:9", "9:21",
                 "match_input_image")  # fmt: skip
MEGAPIXELS = ("0.25", "0.5", "1", "2", "4")
FORMATS = ("jpg", "png", "webp")
EVENTS = ("start", "output", "logs", "completed")
STATUSES = ("starting", "processing", "succeeded", "failed", "canceled")
# @ai-sdk/replicate sends the references of a flux-2 model as input_image, input_image_2, ... (up to 8)
AI_SDK_IMAGE_FIELDS = ("input_image", *(f"input_image_{n}" for n in range(2, 9)))


def _field(name: str) -> str:
    return f"input.{name}"


def _required_text(name: str):
    def check(value: Any) -> str:
        if value is None:
            raise invalid(_field(name), "is required; describe the image you want (or the edit)")
        if not isinstance(value, str):
            raise invalid(_field(name), f"must be a string, got {value!r}")
        return value  # build_request checks the text

    return check


def _images(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise invalid(_field("images"), "must be a list of image URLs (https://, data: or a /v1/files URL)")
    if len(value) > MAX_IMAGES:
        why = f"takes at most {MAX_IMAGES} images here (Replicate takes 5; FLUX.2 [klein] runs 4 references)"
        raise invalid(_field("images"), f"{why}; send {len(value) - MAX_IMAGES} fewer")
    return value


def _boolean(name: str):
    def check(value: Any) -> bool | None:
        if value is not None and not isinstance(value, bool):
            raise invalid(_field(name), f"must be true or false, got {value!r}")
        return value

    return check


def _size(value: Any) -> str | None:
    if value is None:
        return None
    parts = value.split("x") if isinstance(value, str) else []
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise invalid(_field("size"), f"must be 'WIDTHxHEIGHT' in pixels (e.g. '1024x768'), got {value!r}")
    return value


def _image(name: str):
    def check(value: Any) -> str | None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise invalid(_field(name), f"must be an image URL or a data: URL, got {value!r}")
        return value

    return check


class ReplicateInput(BaseModel):
    """`input` of black-forest-labs/flux-2-klein-4b and -9b (Replicate's fields), plus what @ai-sdk/replicate
    sends (input_image.., num_outputs, size) and num_inference_steps."""

    model_config = ConfigDict(extra="allow")  # Replicate ignores inputs a model does not declare
    prompt: Annotated[str, Checked(_required_text("prompt")), Field(description="what to generate")]
    images: Annotated[
        list[str] | None,
        Checked(_images),
        Field(description=f"reference images (URLs, data: URLs or /v1/files URLs), at most {MAX_IMAGES}"),
    ] = None
    aspect_ratio: Annotated[
        Literal[ASPECT_RATIOS] | None,
        Checked(choice(_field("aspect_ratio"), ASPECT_RATIOS)),
        Field(description="default 1:1"),
    ] = None
    output_megapixels: Annotated[
        Literal[MEGAPIXELS] | None,
        Checked(choice(_field("output_megapixels"), MEGAPIXELS)),
        Field(description="default 1"),
    ] = None
    seed: Annotated[int | None, Checked(integer_in(_field("seed"), 0, MAX_SEED))] = None
    go_fast: Annotated[
        bool | None,
        Checked(_boolean("go_fast")),
        Field(description="accepted; the server runs as configured"),
    ] = None
    output_format: Annotated[
        Literal[FORMATS] | None,
        Checked(choice(_field("output_format"), FORMATS)),
        Field(description="default jpg"),
    ] = None
    output_quality: Annotated[
        int | None,
        Checked(integer_in(_field("output_quality"), 0, 100)),
        Field(description="jpg/webp, default 80"),
    ] = None
    disable_safety_checker: Annotated[bool | None, Checked(_boolean("disable_safety_checker"))] = None
    size: Annotated[
        str | None, Checked(_size), Field(description="WIDTHxHEIGHT, beside aspect_ratio (@ai-sdk/replicate)")
    ] = None
    num_outputs: Annotated[int | None, Checked(integer_in(_field("num_outputs"), 1, 64))] = None
    num_inference_steps: Annotated[
        int | None, Checked(integer_in(_field("num_inference_steps"), 1, 1000))
    ] = None
    input_image: Annotated[str | None, Checked(_image("input_image"))] = None


class ReplicateBaseInput(ReplicateInput):
    """`input` of black-forest-labs/flux-2-klein-base-4b and -base-9b: the same, and `guidance`."""

    guidance: Annotated[float | None, Checked(number(_field("guidance"))), Field(description="CFG scale")] = (
        None
    )


def _lora_weights(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        what = "a LoRA's URL (.safetensors), a Hugging Face repo id (owner/name) or a file name in --lora-dir"
        raise invalid(_field("lora_weights"), f"must be {what}, got {value!r}")
    return value


LoraWeights = Annotated[
    str | None,
    Checked(_lora_weights),
    Field(description="the LoRA: an http(s) URL of a .safetensors file, a Hugging Face repo id (owner/name) "
                      "or a file name in the server's --lora-dir"),
]  # fmt: skip
LoraScale = Annotated[
    float | None,
    Checked(number(_field("lora_scale"), 0, MAX_LORA_SCALE)),
    Field(description=f"how strongly the LoRA applies, 0 to {MAX_LORA_SCALE:g} (default 1)"),
]


class ReplicateLoraInput(ReplicateInput):
    """`input` of black-forest-labs/flux-2-klein-4b-lora and -9b-lora: the model's input and one LoRA."""

    lora_weights: LoraWeights = None
    lora_scale: LoraScale = None


class ReplicateBaseLoraInput(ReplicateBaseInput):
    """`input` of black-forest-labs/flux-2-klein-base-4b-lora and -base-9b-lora."""

    lora_weights: LoraWeights = None
    lora_scale: LoraScale = None


def input_schema(uses_cfg: bool, lora: bool) -> type[ReplicateInput]:
    """A model's `input`: Base (guidance) or distilled, with or without a LoRA."""
    if lora:
        return ReplicateBaseLoraInput if uses_cfg else ReplicateLoraInput
    return ReplicateBaseInput if uses_cfg else ReplicateInput


def _webhook_events(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or any(v not in EVENTS for v in value):
        raise invalid("webhook_events_filter", f"must be a list of {', '.join(EVENTS)}, got {value!r}")
    return value


def _object(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("input", f"must be a JSON object of the model's inputs, got {value!r}")
    return value


class PredictionBody(BaseModel):
    """The body of POST /v1/models/{owner}/{name}/predictions and POST /v1/predictions (with `version`)."""

    model_config = ConfigDict(extra="allow")  # stream: true and the like
    version: Annotated[
        str | None,
        Checked(text("version")),
        Field(description="owner/name:id or an id (POST /v1/predictions)"),
    ] = None
    input: Annotated[dict[str, Any], Checked(_object), Field(description="the model's input")] = {}
    webhook: Annotated[str | None, Checked(text("webhook"))] = None
    webhook_events_filter: Annotated[list[Literal[EVENTS]] | None, Checked(_webhook_events)] = None


class PredictionUrls(BaseModel):
    model_config = ConfigDict(extra="allow")
    get: str
    cancel: str
    stream: str | None = None
    web: str | None = None


class Prediction(BaseModel):
    """A prediction, as every Replicate route and webhook shows it."""

    model_config = ConfigDict(extra="allow")
    id: str
    model: str
    version: str
    input: dict[str, Any]
    logs: str
    output: list[str] | None
    data_removed: bool
    error: str | None
    status: Literal[STATUSES]
    source: str
    created_at: str
    started_at: str | None
    completed_at: str | None
    metrics: dict[str, Any]
    urls: PredictionUrls


class PredictionPage(BaseModel):
    next: str | None
    previous: str | None
    results: list[Prediction]


class ModelVersion(BaseModel):
    id: str
    created_at: str
    cog_version: str
    openapi_schema: dict[str, Any]


class ReplicateModel(BaseModel):
    model_config = ConfigDict(extra="allow")
    url: str
    owner: str
    name: str
    description: str | None
    visibility: Literal["public", "private"]
    run_count: int
    latest_version: ModelVersion | None


class ReplicateError(BaseModel):
    """The error body on Replicate's paths (problem+json); a bad input adds `invalid_fields`."""

    model_config = ConfigDict(extra="allow")
    title: str
    detail: str
    status: int


class UploadForm(BaseModel):
    """POST /v1/files (multipart/form-data), as replicate-python and the replicate npm client send it."""

    content: bytes = Field(description="the file: a png, jpeg or webp image (a multipart file part)",
                           json_schema_extra={"format": "binary"})  # fmt: skip
    filename: str | None = Field(None, description="its name (default: the part's filename)")
    type: str | None = Field(None, description="its content type as the client saw it (the bytes decide)")
    metadata: str | None = Field(None, description="a JSON object kept with the file")


class ReplicateFile(BaseModel):
    """A File object: an uploaded image a prediction's `images` can name by its urls.get."""

    id: str
    name: str
    content_type: str
    size: int
    etag: str
    checksums: dict[str, str]
    metadata: dict[str, Any]
    created_at: str
    expires_at: str | None
    urls: dict[str, str]


class ReplicateFilePage(BaseModel):
    next: str | None
    previous: str | None
    results: list[ReplicateFile]
