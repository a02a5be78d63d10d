"""GET /v1/usage: what each API key used and what it cost, from the usage ledger (one entry per succeeded
job, kept after retention deletes the job).

A key sees its own usage; the admin key (--admin-key) sees every key's, or one key's with `key`. On an
open server (no keys) callers see the open server's usage.

Query parameters (all optional):
  since, until  YYYY-MM-DD (UTC midnight), an ISO 8601 datetime (UTC unless it has an offset) or unix
                seconds; since <= finished < until
  model         a model id or alias
  key           admin only: a key's fingerprint ("key-" + 16 hex) as the rows show it; another caller may
                name only its own key (any other is 403)
Bad parameters are 400 naming the parameter, in OpenAI's error shape.

Response (numbers are sums over the rows' jobs; cost_usd is null where no job had a price):
  {"object": "usage",
   "key": "key-0123456789abcdef" | null,       the caller's fingerprint (null on an open server)
   "admin": false,
   "since": 1709251200.0 | null, "until": null, the range applied, unix seconds
   "data": [{"day": "2024-03-01", "key": "key-0123456789abcdef" | null, "model": "flux.2-klein-4b",
             "requests": 3, "images": 4, "megapixels": 4.194304, "engine_seconds": 1.234,
             "cost_usd": 0.05 | null}, ...],         per UTC day, key and model, oldest day first
   "totals": {"requests", "images", "megapixels", "engine_seconds", "cost_usd"},
   "prices": {"flux.2-klein-4b": {"usd_per_megapixel": 0.012}, "flux.2-klein-9b": {"usd_per_image": 0.02}}}
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fastapi import APIRouter, Request

from kleinserve.api import openapi_docs as docs
from kleinserve.api.access import is_admin, owner_of
from kleinserve.api.errors import ApiError, OpenAIError
from kleinserve.errors import ModelNotServed
from kleinserve.models import registered_model
from kleinserve.service.facade import ImageService

FINGERPRINT = re.compile(r"key-[0-9a-f]{16}")
TIME_FORMS = "YYYY-MM-DD, an ISO 8601 datetime or unix seconds"
MAX_TIME_CHARS = 40  # the longest ISO datetime is 32 characters; unix seconds past 40 digits mean nothing
SUMMED = ("requests", "images", "megapixels", "engine_seconds", "cost_usd")


def router(service: ImageService) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/usage", responses=docs.answers(None, OpenAIError, 403))
    async def usage(
        request: Request,
        since: str | None = None,
        until: str | None = None,
        model: str | None = None,
        key: str | None = None,
    ) -> dict:
        """Usage and cost per UTC day, API key and model: the caller's own; every key's for the admin key."""
        start, end = _instant(since, "since"), _instant(until, "until")
        if start is not None and end is not None and end <= start:
            raise ApiError(400, "until must be later than since (until is exclusive)", param="until")
        own, admin = owner_of(request), is_admin(request)
        owner = _owner(key, own, admin)
        rows = await service.usage(
            owner,
            all_owners=admin and key is None,
            model=None if model is None else _model_id(service, model),
            since=start,
            until=end,
        )
        data = [_public(row) for row in rows]
        return {
            "object": "usage",
            "key": own,
            "admin": admin,
            "since": start,
            "until": end,
            "data": data,
            "totals": _totals(data),
            "prices": service.prices.public(),
        }

    return routes


def _instant(value: str | None, param: str) -> float | None:
    if value is None:
        return None
    text = value.strip()
    try:
        if len(text) > MAX_TIME_CHARS:
            raise ValueError
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
            return float(text)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"{param} must be {TIME_FORMS}, got {value[:40]!r}", param=param) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _owner(key: str | None, own: str | None, admin: bool) -> str | None:
    """Whose usage is asked for: the caller's own, or (the admin only) the key named."""
    if key is None:
        return own
    if not FINGERPRINT.fullmatch(key):
        raise ApiError(
            400, f"key must be a key fingerprint as usage rows show it (key- and 16 hex), got {key[:40]!r}",
            param="key",
        )  # fmt: skip
    if not admin and key != own:
        raise ApiError(403, "only the admin key may see another key's usage", param="key")
    return key


def _model_id(service: ImageService, name: str) -> str:
    try:
        return service.model(name).spec.id
    except ModelNotServed:
        spec = registered_model(name)
        if spec is None:
            ids = ", ".join(served.spec.id for served in service.models)
            message = f"model {name[:100]!r} is unknown; give a model id or alias, e.g. {ids}"
            raise ApiError(400, message, param="model") from None
        return spec.id


def _public(row: dict) -> dict:
    return {
        "day": row["day"],
        "key": row["owner"],
        "model": row["model"],
        "requests": row["requests"],
        "images": row["images"],
        "megapixels": round(row["megapixels"], 6),
        "engine_seconds": round(row["engine_seconds"], 3),
        "cost_usd": None if row["cost_usd"] is None else round(row["cost_usd"], 10),
    }


def _totals(rows: list[dict]) -> dict:
    totals = {name: sum(row[name] or 0 for row in rows) for name in SUMMED}
    totals["megapixels"] = round(totals["megapixels"], 6)
    totals["engine_seconds"] = round(totals["engine_seconds"], 3)
    costs = [row["cost_usd"] for row in rows if row["cost_usd"] is not None]
    totals["cost_usd"] = round(sum(costs), 10) if costs else None
    return totals
