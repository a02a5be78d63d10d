"""What /openapi.json says about each route: request bodies and every answer, in each dialect's shape.

The dialects parse bodies themselves (to give their own errors), so FastAPI cannot infer these; they are
written here as pydantic models used only for the schema. Constraints between fields (steps and guidance
depend on the model, seed + n must fit) are beyond a schema: the server answers those with 400 / 422.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kleinserve.imaging import FORMAT_NAMES, OUTPUT_FORMATS

SIDES = "|".join(str(side) for side in range(64, 2049, 16))
SIZE_PATTERN = rf"^(auto|({SIDES})x({SIDES}))$"
MAX_SEED = 2**64 - 4  # any seed up to this works with any n (image i takes seed + i)
OPENAI_FORMATS = Literal[tuple(FORMAT_NAMES)]  # png, jpeg, jpg, webp (imaging's one table)
FAL_FORMATS = Literal[tuple(OUTPUT_FORMATS)]  # png, jpeg, webp
PROMPT = Field(min_length=1, max_length=32_000, pattern=r"\S", description="what to generate")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- OpenAI ----------------------------------------------------------------------------------------


class _ImageFields(BaseModel):
    """What generations and edits share."""

    prompt: str = PROMPT
    model: str | None = None
    n: int | None = Field(None, ge=1, le=4)
    size: str | None = Field(None, pattern=SIZE_PATTERN)
    response_format: Literal["url", "b64_json"] | None = None
    output_format: OPENAI_FORMATS | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    quality: Literal["auto", "low", "medium", "high", "standard", "hd"] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    num_inference_steps: int | None = Field(None, ge=4, le=8, description="4..8 distilled, 1..100 Base")
    guidance_scale: float | None = Field(None, description="Base models only (0..30)")
    negative_prompt: str | None = Field(None, description="Base models only")


class ImagesRequest(_ImageFields):
    """POST /v1/images/generations (JSON)."""

    model_config = ConfigDict(extra="forbid")
    background: Literal["auto", "opaque"] | None = None
    style: str | None = None
    moderation: str | None = None
    user: str | None = None


class EditForm(_ImageFields):
    """POST /v1/images/edits (multipart/form-data): the same fields as text parts, and 1..4 images."""

    image: list[bytes] = Field(
        min_length=1, max_length=4, json_schema_extra={"items": {"type": "string", "format": "binary"}}
    )


class OpenAIImage(_Open):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(_Open):
    created: int
    data: list[OpenAIImage]
    usage: dict[str, Any] | None = None


class OpenAIErrorDetail(_Open):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


# --- fal -------------------------------------------------------------------------------------------


class ImageSize(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(ge=64, le=2048, multiple_of=16)
    height: int = Field(ge=64, le=2048, multiple_of=16)


class FalInput(BaseModel):
    """fal input (text-to-image; edits add image_urls or image_url)."""

    model_config = ConfigDict(extra="allow")
    prompt: str = PROMPT
    image_size: (
        Literal["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]
        | ImageSize
        | None
    ) = None
    num_images: int | None = Field(None, ge=1, le=4)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    num_inference_steps: int | None = Field(None, ge=4, le=8, description="4..8 distilled, 1..100 Base")
    sync_mode: bool | None = None
    enable_safety_checker: bool | None = None
    output_format: FAL_FORMATS | None = None
    image_urls: list[str] | None = Field(None, min_length=1, max_length=4, description="edit endpoints")
    image_url: str | None = Field(None, description="edit endpoints: one image (what @ai-sdk/fal sends)")
    guidance_scale: float | None = Field(None, description="Base endpoints only")
    negative_prompt: str | None = Field(None, description="Base endpoints only")


class FalImage(_Open):
    url: str
    content_type: str
    width: int
    height: int


class FalOutput(_Open):
    images: list[FalImage]
    seed: int
    has_nsfw_concepts: list[bool]


class FalError(_Open):
    detail: str | list[dict[str, Any]]
    error_type: str | None = None


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


# --- how routes use them ---------------------------------------------------------------------------

# Statuses any API route can answer before its handler runs: keys, sizes, rate limits, hosts, slow bodies.
GATE = (400, 401, 408, 413, 429)
SERVICE = (500, 503, 507)  # a failed generation; queue full, loading or shutting down; disk full


def json_body(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _schema(model)}}}}


def multipart_body(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _schema(model)}}}}


def answers(ok: type[BaseModel] | None, error: type[BaseModel], *statuses: int, media: str = "") -> dict:
    """`responses=` for a route: its 200 (a model, or a media type such as text/event-stream) and errors."""
    documented: dict[int | str, dict] = {}
    if media:
        documented[200] = {"description": "OK", "content": {kind: {} for kind in media.split(",")}}
    elif ok is not None:
        documented[200] = {"model": ok, "description": "OK"}
    for status in sorted({*GATE, *statuses}):
        documented[status] = {"model": error, "description": "error (see the message)"}
    return documented


def _schema(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return _inline(schema, schema.pop("$defs", {}))


def _inline(node, definitions: dict):
    """Request schemas are written inline (no component references to register)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(dict(definitions[node["$ref"].rsplit("/", 1)[-1]]), definitions)
        return {key: _inline(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    return node
