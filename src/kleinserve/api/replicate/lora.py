"""Replicate's LoRA models (black-forest-labs/flux-2-klein-4b-lora, ...; catalog.py): `input.lora_weights`
(an http(s) URL of a .safetensors file, a Hugging Face repo id or a file name in the server's --lora-dir)
and `input.lora_scale` (0..4, default 1) as one LoRA of the shared LoRA support (service/lora_sources.py),
with its checks and errors, named as the fields were sent. The plain models take no LoRA: `lora_weights`
there is a 422 naming it and the model that takes it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from kleinserve.api.errors import invalid
from kleinserve.api.replicate.catalog import LORA_SUFFIX
from kleinserve.errors import InvalidRequest
from kleinserve.request import LoraChoice, check_loras

FIELDS = ("lora_weights", "lora_scale")


def refuse_on_plain(model: str, fields: dict[str, Any]) -> None:
    """A 422 naming input.lora_weights (or lora_scale) when a model without LoRA was sent one."""
    for name in FIELDS:
        if name in fields:
            raise invalid(f"input.{name}", f"{model} takes no LoRA; run {model}{LORA_SUFFIX} for a LoRA")


def loras(given: Any) -> tuple[LoraChoice, ...]:
    """The one LoRA `lora_weights` names, at `lora_scale` (none without lora_weights)."""
    weights = getattr(given, "lora_weights", None)
    if weights is None:
        if getattr(given, "lora_scale", None) is not None:
            fix = "applies to input.lora_weights; send the LoRA too, or leave it out"
            raise invalid("input.lora_scale", fix)
        return ()
    scale = given.lora_scale if given.lora_scale is not None else 1.0
    with named_as_sent():
        return check_loras([{"path": weights, "scale": scale}])


@contextlib.contextmanager
def named_as_sent() -> Iterator[None]:
    """The shared LoRA checks' errors (loras[0].path, loras[0].scale) as 422s naming input.lora_weights or
    input.lora_scale."""
    try:
        yield
    except InvalidRequest as exc:
        if not exc.field.startswith("loras"):
            raise
        field = "input.lora_scale" if exc.field.endswith(".scale") else "input.lora_weights"
        raise invalid(field, exc.reason) from None
