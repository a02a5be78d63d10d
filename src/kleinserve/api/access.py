"""Who may call, how often, and how much they may send: API keys, a per-key rate limit, request size limits.

A plain ASGI middleware, so a refused request costs no parsing: a body declared too large is answered
with 413 before it is read, and a body that grows past the limit while streaming is cut off with 413.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import time
from dataclasses import dataclass

from kleinserve.api.errors import ApiError
from kleinserve.settings import Settings

# stored image URLs and Replicate prediction streams (a random id) are unguessable capabilities
OPEN_PATHS = ("/health", "/ready", "/metrics", "/files/", "/v1/streams/")
CONSOLE_PAGES = ("/", "/status")  # the console's pages and files load without a key; its API calls need one
CONSOLE_FILES = "/console/"
AUTH_SCHEMES = ("bearer", "key")  # OpenAI sends Bearer, fal-client sends Key


KEY_PREFIX = "key-"


def owner_of(request) -> str | None:
    """The API key (fingerprint) a request came with; None on an open server."""
    return getattr(request.state, "owner", None)


def is_admin(request) -> bool:
    """Whether the request came with the admin key (--admin-key): it sees every key's usage."""
    return getattr(request.state, "admin", False)


def key_fingerprint(key: bytes) -> str:
    """Who an API key is, in records and metrics, without the key itself."""
    return KEY_PREFIX + hashlib.sha256(key).hexdigest()[:16]


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(
            413,
            f"request body is larger than {limit / 2**20:.0f} MiB, the limit; send smaller or fewer images",
            code="payload_too_large",
        )


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per caller: `per_minute` requests, refilled continuously."""

    MAX_CALLERS = 10_000  # past this, callers with a full bucket are forgotten (they lose nothing)

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._buckets: dict[str, _Bucket] = {}

    def retry_after(self, caller: str) -> int | None:
        """None if the caller may go ahead now (a token is spent); else seconds until it may."""
        now = time.monotonic()
        rate = self.per_minute / 60.0
        if len(self._buckets) > self.MAX_CALLERS:
            self._forget_idle(now, rate)
        bucket = self._buckets.setdefault(caller, _Bucket(float(self.per_minute), now))
        bucket.tokens = min(float(self.per_minute), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - bucket.tokens) / rate))

    def _forget_idle(self, now: float, rate: float) -> None:
        self._buckets = {
            caller: bucket
            for caller, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * rate < self.per_minute
        }


class AccessMiddleware:
    def __init__(self, app, settings: Settings):
        self.app = app
        admin = [settings.admin_key] if settings.admin_key else []
        self.keys = [key.encode() for key in (*settings.api_keys, *admin)]
        self.admin = key_fingerprint(admin[0].encode()) if admin else None
        self.hosts = {host.lower().strip("[]") for host in settings.allowed_hosts}
        self.max_body = settings.max_request_bytes
        self.body_timeout = settings.body_timeout_s
        self.limiter = RateLimiter(settings.rate_limit_per_minute) if settings.rate_limit_per_minute else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            caller = self._check(scope)
        except ApiError as exc:
            return await exc.response(scope.get("path", ""))(scope, receive, send)
        state = scope.setdefault("state", {})
        state["caller"] = caller
        state["owner"] = caller if caller.startswith(KEY_PREFIX) else None  # jobs belong to API keys
        state["admin"] = caller == self.admin
        await self.app(scope, self._limited(receive), send)

    def _check(self, scope) -> str:
        """Raises ApiError (401, 413, 429); returns who is calling (a key label or the client address)."""
        headers = dict(scope["headers"])
        if self.hosts:
            self._check_host(headers.get(b"host", b"").decode("latin-1"))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise BodyTooLarge(self.max_body)
        if scope["path"].startswith((*OPEN_PATHS, CONSOLE_FILES)) or scope["path"] in CONSOLE_PAGES:
            return "open"
        caller = self._authenticate(_credentials(headers), scope.get("client"))
        if self.limiter and scope["method"] == "POST":
            retry_after = self.limiter.retry_after(caller)
            if retry_after is not None:
                raise ApiError(
                    429,
                    f"rate limit of {self.limiter.per_minute} requests per minute reached;"
                    f" retry in {retry_after} s",
                    retry_after=retry_after,
                )
        return caller

    def _check_host(self, host: str) -> None:
        """Returned URLs are built from the Host header (without --public-base-url): only known names."""
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name.lower().strip("[]") not in self.hosts:
            raise ApiError(
                400, f"Host {host[:100]!r} is not a name of this server (--allowed-host)", code="invalid_host"
            )

    def _authenticate(self, header: bytes, client) -> str:
        if not self.keys:
            return f"client-{client[0]}" if client else "anonymous"
        scheme, _, token = header.decode("latin-1").strip().partition(" ")
        token = token.strip().encode("latin-1")
        if scheme.lower() in AUTH_SCHEMES:
            for key in self.keys:
                if hmac.compare_digest(token, key):
                    return key_fingerprint(key)
        message = "a valid API key is required: send Authorization: Bearer <key> (or Key <key>, or x-key)"
        raise ApiError(401, message if header else f"no API key given; {message}", code="invalid_api_key")

    def _limited(self, receive):
        received, complete = 0, False

        async def receive_limited():
            nonlocal received, complete
            if complete:  # only a disconnect can come now: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                raise ApiError(
                    408,
                    f"the request body stalled for {self.body_timeout:g} s; send it without pausing",
                    code="request_timeout",
                ) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        return receive_limited


def _credentials(headers: dict) -> bytes:
    """The Authorization header, or BFL's `x-key: <key>` read as `Bearer <key>` (api.bfl.ai's clients)."""
    given = headers.get(b"authorization", b"")
    key = headers.get(b"x-key", b"").strip()
    return given if given or not key else b"Bearer " + key
