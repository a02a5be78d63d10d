"""Prices the operator sets per model (`--price MODEL=USD`), and what a job costs at them.

A price is per megapixel generated (`MODEL=0.01`, `MODEL=0.01/mp`) or per image (`MODEL=0.02/image`). A
model without a price has no cost (None), not a cost of zero: the usage ledger tells the two apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kleinserve.errors import KleinserveError
from kleinserve.models import resolve_model

PRICE_FORMS = "MODEL=USD_PER_MEGAPIXEL, MODEL=USD/mp or MODEL=USD/image (e.g. flux.2-klein-4b=0.012)"
UNITS = {"mp": "usd_per_megapixel", "image": "usd_per_image"}


class InvalidPrice(KleinserveError, ValueError):
    """A --price that cannot be read."""


@dataclass(frozen=True)
class Price:
    usd: float
    unit: str  # "mp" or "image"

    def cost(self, images: int, megapixels: float) -> float:
        return self.usd * (megapixels if self.unit == "mp" else images)

    def public(self) -> dict:
        return {UNITS[self.unit]: self.usd}


def parse_prices(entries: tuple[str, ...]) -> dict[str, Price]:
    """Canonical model id -> its price, from --price values; InvalidPrice says which one is wrong and why."""
    prices: dict[str, Price] = {}
    for entry in entries:
        model, price = _parse(entry)
        if model in prices:
            raise InvalidPrice(f"{model} is priced twice ({entry!r}); give each model one --price")
        prices[model] = price
    return prices


def _parse(entry: str) -> tuple[str, Price]:
    name, equals, amount = entry.rpartition("=")
    if not equals or not name.strip():
        raise InvalidPrice(f"{entry!r} is not a price; write {PRICE_FORMS}")
    try:
        model = resolve_model(name).id
    except KleinserveError as exc:
        raise InvalidPrice(f"{entry!r}: {exc}") from None
    number, _, unit = amount.strip().partition("/")
    unit = unit.strip().lower() or "mp"
    if unit not in UNITS:
        raise InvalidPrice(f"{entry!r}: the unit must be mp or image, got {unit!r}; write {PRICE_FORMS}")
    try:
        usd = float(number)
    except ValueError:
        usd = math.nan
    if not math.isfinite(usd) or usd < 0:
        raise InvalidPrice(
            f"{entry!r}: the price must be a number of US dollars, 0 or more; write {PRICE_FORMS}"
        )
    return model, Price(usd, unit)


class Prices:
    """The prices in force, by canonical model id."""

    def __init__(self, entries: tuple[str, ...]):
        self.by_model = parse_prices(entries)

    def cost(self, model: str, images: int, megapixels: float) -> float | None:
        price = self.by_model.get(model)
        return None if price is None else price.cost(images, megapixels)

    def public(self) -> dict[str, dict]:
        return {model: price.public() for model, price in self.by_model.items()}
