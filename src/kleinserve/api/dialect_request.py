"""What every dialect does on the way in: its fields become build_request's keyword arguments, and what
build_request refuses comes back as a 400 naming the field as the dialect's user sent it.

A dialect describes itself with `names`, build_request's argument -> the dialect's field (OpenAI's `n`,
fal's `num_images`); the arguments both dialects name alike are COMMON_FIELDS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

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
