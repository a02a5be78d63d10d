"""Black Forest Labs' API (api.bfl.ai) wire schemas: the body POST /v1/flux-2-klein-* takes (BflRequest,
which the route validates with and /openapi.json documents), the submit answer, get_result's answer and
the error shape (FastAPI's `{"detail": ...}`, which @ai-sdk/black-forest-labs shows).

Fields are declared in the order they are checked (the first wrong one answers). Limits that depend on the
model (steps, guidance, size) are build_request's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kleinserve.api.dialect_request import MAX_SEED, PROMPT, Checked, choice, integer_in, number, text
from kleinserve.api.errors import invalid

MAX_IMAGES = 4  # input_image, input_image_2 .. input_image_4
IMAGE_FIELDS = ("input_image", *(f"input_image_{n}" for n in range(2, MAX_IMAGES + 1)))
EXTRA_IMAGE_FIELDS = tuple(f"input_image_{n}" for n in range(MAX_IMAGES + 1, 11))  # BFL documents up to 10
FORMATS = ("jpeg", "png", "webp")
STATUSES = ("Pending", "Ready", "Error", "Content Moderated", "Task not found")


def _prompt(value: Any) -> Any:
    if value is None:
        raise invalid("prompt", "is required; describe the image you want (or the edit)")
    return value  # build_request checks the text


def _image(name: str):
    def check(value: Any) -> str | None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise invalid(name, f"must be an image URL or base64 text, got {value!r}")
        return value

    return check


def _image_field(name: str):
    return Annotated[str | None, Checked(_image(name)), Field(description="an image URL or base64 image")]


class BflRequest(BaseModel):
    """The body of POST /v1/flux-2-klein-* (BFL's FLUX.2 [klein] endpoints)."""

    model_config = ConfigDict(extra="allow")  # BFL's other models' fields (prompt_upsampling, raw...)
    prompt: Annotated[str, Checked(_prompt)] = PROMPT
    input_image: _image_field("input_image") = None
    input_image_2: _image_field("input_image_2") = None
    input_image_3: _image_field("input_image_3") = None
    input_image_4: _image_field("input_image_4") = None
    seed: Annotated[int | None, Checked(integer_in("seed", 0, MAX_SEED))] = None
    aspect_ratio: Annotated[
        str | None,
        Checked(text("aspect_ratio")),
        Field(description="W:H, used when width and height are not given"),
    ] = None
    width: Annotated[
        int | None, Checked(integer_in("width", 1, 100_000)), Field(description="pixels, a multiple of 16")
    ] = None
    height: Annotated[
        int | None, Checked(integer_in("height", 1, 100_000)), Field(description="pixels, a multiple of 16")
    ] = None
    steps: Annotated[int | None, Checked(integer_in("steps", 1, 1000))] = None
    guidance: Annotated[float | None, Checked(number("guidance")), Field(description="Base models only")] = (
        None
    )
    output_format: Annotated[
        Literal["jpeg", "png", "webp"] | None, Checked(choice("output_format", FORMATS))
    ] = None
    safety_tolerance: Annotated[
        int | None,
        Checked(integer_in("safety_tolerance", 0, 6)),
        Field(description="accepted; see the README for how it acts"),
    ] = None
    webhook_url: Annotated[
        str | None, Checked(text("webhook_url")), Field(description="POSTed the result when the task ends")
    ] = None
    webhook_secret: Annotated[
        str | None,
        Checked(text("webhook_secret")),
        Field(description="signs the webhook: X-BFL-Signature: sha256=<hex HMAC-SHA256 of the body>"),
    ] = None


class BflSubmitted(BaseModel):
    id: str
    polling_url: str
    cost: float | None = None
    input_mp: float | None = None
    output_mp: float | None = None


class BflSample(BaseModel):
    model_config = ConfigDict(extra="allow")
    sample: str
    seed: int | None = None
    prompt: str | None = None


class BflResult(BaseModel):
    """GET /v1/get_result's answer."""

    model_config = ConfigDict(extra="allow")
    id: str
    status: Literal["Pending", "Ready", "Error", "Content Moderated", "Task not found"]
    result: BflSample | None = None
    progress: float | None = None
    details: dict[str, Any] | None = None


class BflError(BaseModel):
    """The error body on BFL's routes: FastAPI's `{"detail": ...}` (a list of {loc, msg, type} on a 422)."""

    model_config = ConfigDict(extra="allow")
    detail: str | list[dict[str, Any]]
