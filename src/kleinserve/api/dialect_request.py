"""What every dialect does on the way in: its body schema (a pydantic model, the one /openapi.json shows)
checks the body, its fields become build_request's keyword arguments, and what build_request refuses comes
back as a 400 naming the field as the dialect's user sent it.

A schema's fields are `Checked`: documented as their declared type, validated by the dialect's own check
(with the messages its clients know) rather than by pydantic's coercion, which would take `true` for 1 and
answer in its own words. Fields whose limits depend on the model (steps, guidance, seed + n) pass as sent:
build_request judges them against the model that serves the request.

A dialect describes itself with `names`, build_request's argument -> the dialect's field (OpenAI's `n`,
fal's `num_images`); the arguments both dialects name alike are COMMON_FIELDS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError
from pydantic_core import core_schema

from kleinserve.api.errors import ApiError, invalid
from kleinserve.errors import InvalidRequest
from kleinserve.models import ModelSpec
from kleinserve.request import GenerationRequest, build_request

# build_request's arguments that OpenAI (our extensions) and fal name alike; read in this order.
COMMON_FIELDS = {
    "prompt": "prompt",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "seed": "seed",
    "negative_prompt": "negative_prompt",
}
SIDES = ("width", "height")  # one dialect field holds both (size, image_size): errors say which side
# Where an item's index goes in an error: on the field ("image_urls[1]"), into the message (OpenAI's repeated
# `image`: "image: image [1] is 32x32; ..."), or nowhere (fal's lone `image_url`).
IndexPlace = Literal["field", "message", "nowhere"]
MAX_SEED = 2**64 - 4  # documented: any seed up to this works with any n (image i takes seed + i)
PROMPT = Field(min_length=1, max_length=32_000, pattern=r"\S", description="what to generate")
Schema = TypeVar("Schema", bound=BaseModel)


class Checked:
    """`Annotated[T, Checked(check)]`: a body field documented as T and validated by `check(value)` (or
    `check(value, info)` with `with_info`, for the validation context and the fields checked before it),
    which returns the value to keep or raises the dialect's ApiError / InvalidRequest. Those are not
    ValueErrors: pydantic lets them through, so the first field that fails, in declaration order, answers.
    Without a check the value is kept as sent."""

    def __init__(self, check: Callable[..., Any] | None = None, *, with_info: bool = False):
        self.check = check or _as_sent
        self.with_info = with_info

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        documented = handler(source)
        if self.with_info:
            return core_schema.with_info_plain_validator_function(
                self.check, json_schema_input_schema=documented
            )
        return core_schema.no_info_plain_validator_function(self.check, json_schema_input_schema=documented)


def integer_in(name: str, low: int, high: int) -> Callable[[Any], int | None]:
    """A Checked validator: None, or an integer (not a bool) from low to high; else an error naming `name`."""

    def check(value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise invalid(name, f"must be an integer from {low} to {high}, got {value!r}")
        return value

    return check


def number(name: str, low: float | None = None, high: float | None = None) -> Callable[[Any], float | None]:
    """A Checked validator: None, or a number (not a bool), from `low` to `high` when given; else an error
    naming `name`."""

    def check(value: Any) -> float | None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise invalid(name, f"must be a number, got {value!r}")
        if value is not None and low is not None and high is not None and not low <= value <= high:
            raise invalid(name, f"must be a number from {low:g} to {high:g}, got {value!r}")
        return value

    return check


def choice(name: str, choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    """A Checked validator: None, or one of `choices`; else an error naming `name` and the choices."""

    def check(value: Any) -> str | None:
        if value is not None and value not in choices:
            raise invalid(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def text(name: str) -> Callable[[Any], str | None]:
    """A Checked validator: None, or a string; else an error naming `name`."""

    def check(value: Any) -> str | None:
        if value is not None and not isinstance(value, str):
            raise invalid(name, f"must be a string, got {value!r}")
        return value

    return check


def _as_sent(value: Any) -> Any:
    return value


def validated(schema: type[Schema], fields: Mapping[str, Any], **context: Any) -> Schema:
    """`fields` checked by `schema`, field by field in its declared order; `context` goes to the checks
    that take `info`. A required field left out is checked as null, so its check says what is missing."""
    missing = {
        name: None for name, f in schema.model_fields.items() if f.is_required() and name not in fields
    }
    try:
        return schema.model_validate({**fields, **missing}, context=context)
    except ValidationError as exc:  # a field without a Checked annotation: pydantic's words, our shape
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise (invalid(field, error["msg"]) if field else ApiError(400, error["msg"])) from None


def sent(body: BaseModel) -> dict[str, Any]:
    """The fields a checked body carried (a field left out is not there: build_request gives its default)."""
    return {name: getattr(body, name) for name in body.model_fields_set if name in type(body).model_fields}


def to_request(
    spec: ModelSpec,
    fields: Mapping[str, Any],
    names: Mapping[str, str],
    *,
    read: Callable[[Mapping[str, Any], str], Any] = Mapping.get,
    index: IndexPlace = "field",
    **given: Any,
) -> GenerationRequest:
    """build_request for `spec`: the arguments in `given` (what the dialect worked out itself: size,
    images, ...), and every other argument in `names` read from `fields` with `read`, in `names`' order,
    when the user sent it (a field left out takes build_request's default)."""
    arguments = {
        argument: read(fields, field)
        for argument, field in names.items()
        if argument not in given and field in fields
    }
    try:
        return build_request(spec, **arguments, **given)
    except InvalidRequest as exc:
        raise field_error(exc, names, index) from exc


def field_error(exc: InvalidRequest, names: Mapping[str, str], index: IndexPlace = "field") -> ApiError:
    """build_request's complaint about an argument, as a 400 naming the dialect's field ("images[1]" ->
    "image_urls[1]"); an argument the dialect does not rename keeps its name."""
    argument = exc.field.split("[")[0]
    field, item = names.get(argument, argument), exc.field[len(argument) :]
    reason = f"{argument} {exc.reason}" if argument in SIDES else exc.reason
    if item and index == "message":
        return invalid(field, f"{field} {item} {reason}")
    return invalid(field + item if index == "field" else field, reason)
