"""fal's proxy protocol, for @fal-ai/client (which has no host setting): with
`fal.config({proxyUrl: "http://HOST:8000/fal/proxy"})` (in Node `proxyUrl: {url, when: "always"}`) every
call comes to PROXY_PATH with its real target in `x-fal-target-url`, method, headers and body unchanged.

Targets are never fetched: a fal URL is mapped to this server's own route and dispatched here, so this
is no open proxy. `https://fal.run/fal-ai/...` -> `/fal-ai/...` (run, stream) and
`https://queue.fal.run/fal-ai/...` -> `/queue/fal-ai/...` (submit, status, status stream, result, cancel),
query string included. Any other target is refused with 400.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from kleinserve.api.errors import ApiError

PROXY_PATH = "/fal/proxy"
TARGET_HEADER = b"x-fal-target-url"
HOST_PREFIXES = {"fal.run": "", "queue.fal.run": "/queue"}  # fal host -> where its routes live here
FAL_PATH = re.compile(r"/fal-ai/[A-Za-z0-9._~/-]+")


class FalProxyMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].rstrip("/") != PROXY_PATH:
            return await self.app(scope, receive, send)
        try:
            path, query = local_target(dict(scope["headers"]).get(TARGET_HEADER, b"").decode("latin-1"))
        except ApiError as refused:
            return await refused.response("/fal-ai/")(scope, receive, send)
        routed = {**scope, "path": path, "raw_path": path.encode(), "query_string": query.encode()}
        await self.app(routed, receive, send)


def local_target(url: str) -> tuple[str, str]:
    """`x-fal-target-url` -> (this server's path, query string)."""
    if not url:
        raise ApiError(
            400, f"{PROXY_PATH} needs the x-fal-target-url header (what @fal-ai/client's proxyUrl sends)"
        )
    parts = urlsplit(url)
    prefix = HOST_PREFIXES.get((parts.hostname or "").lower())
    if parts.scheme != "https" or prefix is None or not FAL_PATH.fullmatch(parts.path) or ".." in parts.path:
        raise ApiError(
            400,
            f"x-fal-target-url {url[:200]!r} is not a fal endpoint this server serves; it routes "
            "https://fal.run/fal-ai/... and https://queue.fal.run/fal-ai/... only (file uploads through "
            "fal storage are not supported: pass images as URLs or data URIs)",
            code="proxy_target_refused",
        )
    return prefix + parts.path, parts.query
