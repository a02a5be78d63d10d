"""The URL a caller gives for its webhook, checked when the job is submitted (every dialect names its own
field): an http(s) URL of a host the outbound guard lets this server call."""

from __future__ import annotations

from httpx import URL, InvalidURL

from kleinserve.api.errors import invalid
from kleinserve.errors import InvalidRequest
from kleinserve.service.facade import ImageService


async def check_webhook_url(service: ImageService, url: str, field: str) -> None:
    """A 4xx naming `field` unless `url` is an http(s) URL of a host this server may call."""
    try:
        parsed = URL(url)
    except InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise invalid(field, f"must be an http(s) URL, got {url[:80]!r}")
    try:
        await service.check_webhook_address(parsed.host, parsed.port, field)
    except InvalidRequest as exc:
        raise invalid(field, exc.reason) from exc
