"""Every response carries `x-request-id` (openai-python and openai-node expose it as `_request_id`). A
generation answers with its job id, set by the dialect; any other response gets a fresh id here (an
unexpected exception's 500 is sent outside the middlewares, so its handler adds one itself)."""

from __future__ import annotations

import secrets

HEADER = b"x-request-id"


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


class RequestIdMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == HEADER for name, _ in headers):
                    headers.append((HEADER, new_request_id().encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)
