"""The Vercel AI Gateway image dialect's wire schemas: the body @ai-sdk/gateway's image model posts to
/v1/ai/image-model (`prompt, n, size, aspectRatio, seed, providerOptions, files, mask`), which the route
validates with GatewayImageRequest and /openapi.json documents from it, and the answers it parses
(`{images: [base64], warnings, providerMetadata, usage}`, errors as `{error: {message, type, param}}`).

Fields are declared in the order they are checked (the first wrong one answers). Limits that depend on the
model (n, steps, guidance, seed + n, size) are build_request's.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kleinserve.api.dialect_request import MAX_SEED, PROMPT, Checked, integer_in
from kleinserve.api.errors import ApiError, invalid
from kleinserve.request import REFERENCE_MAX_AREA, parse_size

# providerOptions keys read for the model's own options (@ai-sdk/black-forest-labs names it
# blackForestLabs; the gateway's model ids say bfl); other providers' keys are not ours and are ignored
PROVIDER_KEYS = ("bfl", "blackForestLabs")
OPTIONS = {"steps": "steps", "guidance": "guidance"}  # providerOptions.bfl.X -> build_request's argument
MAX_FILES = 4
RATIO_PATTERN = r"^\d+:\d+$"
MAX_SIDE = 2048


# --- checks ----------------------------------------------------------------------------------------


def _prompt(value: Any) -> Any:
    if value is None:
        raise invalid("prompt", "is required; describe the image you want (or the edit)")
    return value  # build_request checks the text


def _size(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid("size", f"must be a string like '1024x768', got {value!r}")
    parse_size(value, "size")  # InvalidRequest: a 400 naming size
    return value


def _aspect_ratio(value: Any, info) -> str | None:
    if value is None:
        return None
    if info.data.get("size") is not None:
        raise invalid("aspectRatio", "give size or aspectRatio, not both")
    ratio_sides(value)
    return value


def _provider_options(value: Any) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("providerOptions", f"must be an object keyed by provider, got {value!r}")
    given = [key for key in PROVIDER_KEYS if key in value]
    if len(given) > 1:
        raise invalid("providerOptions", f"give the model's options under one of {' or '.join(given)}")
    for key in given:
        if not isinstance(value[key], dict):
            raise invalid(f"providerOptions.{key}", f"must be an object, got {value[key]!r}")
    return value


def _files(value: Any) -> list | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid("files", f"must be a list of up to {MAX_FILES} image files, got {value!r}")
    if len(value) > MAX_FILES:
        raise invalid("files", f"{len(value)} files given; FLUX.2 [klein] takes 1 to {MAX_FILES} references")
    for index, item in enumerate(value):
        file_reference(item, f"files[{index}]")
    return value


def _mask(value: Any) -> None:
    if value is not None:
        raise invalid("mask", "masks are not supported by FLUX.2 [klein]; describe the edit in the prompt")


# --- what the fields mean --------------------------------------------------------------------------


def ratio_sides(value: Any) -> tuple[int, int]:
    """'16:9' -> the multiple-of-16 size of about 1 MP with that aspect (1360x768)."""
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):
        raise invalid("aspectRatio", f"must be a string like '16:9' (positive integers), got {value!r}")
    ratio = int(parts[0]) / int(parts[1])
    if not 1 / 8 <= ratio <= 8:
        raise invalid("aspectRatio", f"must be at most 8:1 either way, got {value!r}")
    width, height = math.sqrt(REFERENCE_MAX_AREA * ratio), math.sqrt(REFERENCE_MAX_AREA / ratio)
    scale = min(1.0, MAX_SIDE / max(width, height))  # a long side past the limit: both shrink, aspect kept
    return _sixteen(width * scale), _sixteen(height * scale)


def _sixteen(side: float) -> int:
    return min(MAX_SIDE, max(64, round(side / 16) * 16))


def file_reference(item: Any, name: str) -> str:
    """An ImageModelV4File as a URL the reference fetcher takes: `{type: "file", mediaType, data: base64}`
    becomes a data: URL, `{type: "url", url}` stays the URL."""
    if not isinstance(item, dict) or item.get("type") not in ("file", "url"):
        shapes = '{"type": "file", "mediaType", "data": <base64>} or {"type": "url", "url"}'
        raise invalid(name, f"must be {shapes}")
    if item["type"] == "url":
        if not isinstance(item.get("url"), str):
            raise invalid(f"{name}.url", "must be an https URL or a data: URL string")
        return item["url"]
    if not isinstance(item.get("data"), str):
        raise invalid(f"{name}.data", "must be the image's bytes as a base64 string")
    media = item.get("mediaType") or "image/png"
    if not isinstance(media, str) or not media.startswith("image/"):
        raise invalid(f"{name}.mediaType", f"must be an image media type like image/png, got {media!r}")
    return f"data:{media};base64,{item['data']}"


def model_options(options: dict | None) -> tuple[str, dict]:
    """(the key they came under, the model's own options) from providerOptions; ({}) when none."""
    for key in PROVIDER_KEYS:
        if options and key in options:
            return key, options[key]
    return PROVIDER_KEYS[0], {}


# --- bodies ----------------------------------------------------------------------------------------


class FileInput(BaseModel):
    type: Literal["file", "url"]
    mediaType: str | None = None
    data: str | None = Field(None, description="the image, base64")
    url: str | None = Field(None, description="an https URL or a data: URL")


class GatewayImageRequest(BaseModel):
    """POST /v1/ai/image-model (JSON), the model in the `ai-model-id` header."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[str, Checked(_prompt)] = PROMPT
    n: Annotated[int | None, Checked(integer_in("n", 1, 4))] = Field(None, ge=1, le=4)
    size: Annotated[str | None, Checked(_size)] = Field(None, pattern=r"^\d+x\d+$", description="WxH")
    aspectRatio: Annotated[str | None, Checked(_aspect_ratio, with_info=True)] = Field(
        None, pattern=RATIO_PATTERN, description="W:H, about 1 MP; not with size"
    )
    seed: Annotated[int | None, Checked(integer_in("seed", 0, MAX_SEED))] = Field(None, ge=0, le=MAX_SEED)
    providerOptions: Annotated[dict[str, dict[str, Any]] | None, Checked(_provider_options)] = Field(
        None, description="bfl or blackForestLabs: {steps, guidance}; other providers' keys ignored"
    )
    files: Annotated[list[FileInput] | None, Checked(_files)] = Field(
        None, max_length=MAX_FILES, description="reference images to edit from"
    )
    mask: Annotated[None, Checked(_mask)] = Field(None, description="not supported: a 400")


# --- answers ---------------------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class GatewayWarning(_Open):
    type: str
    feature: str | None = None
    details: str | None = None
    message: str | None = None


class GatewayUsage(_Open):
    inputTokens: int | None = None
    outputTokens: int | None = None
    totalTokens: int | None = None


class GatewayImageResponse(_Open):
    images: list[str] = Field(description="PNG images, base64")
    warnings: list[GatewayWarning] = []
    providerMetadata: dict[str, dict[str, Any]] = {}
    usage: GatewayUsage | None = None


class GatewayErrorDetail(_Open):
    message: str
    type: str | None = None
    param: Any = None
    code: str | None = None


class GatewayError(BaseModel):
    """The error body @ai-sdk/gateway parses: `type` picks its error class, `message` is what it shows."""

    error: GatewayErrorDetail


class ModelNotFound(ApiError):
    """An `ai-model-id` this server does not serve, as the gateway says it (`model_not_found`, the id in
    `param.modelId`)."""

    def __init__(self, model_id: str, served: list[str]):
        message = f"ai-model-id: model '{model_id}' is not served here; served: {', '.join(served)}"
        super().__init__(404, message, param="ai-model-id", code="model_not_found")
        self.model_id = model_id

    def body(self) -> dict:
        error = {"message": self.message, "type": "model_not_found", "param": {"modelId": self.model_id}}
        return {"error": {**error, "code": self.code}}
