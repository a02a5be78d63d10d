"""Reading a JSON request body: an object, or a 400 that says what is wrong. Large bodies (data URIs,
megabytes) are parsed on a worker thread, not the event loop."""

from __future__ import annotations

import asyncio
import json

from fastapi import Request

from kleinserve.api.errors import ApiError


async def json_object(request: Request) -> dict:
    body = await request.body()
    try:
        fields = json.loads(body) if len(body) < 2**20 else await asyncio.to_thread(json.loads, body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError:
        raise ApiError(400, "the body's JSON is nested too deeply", code="invalid_json") from None
    if not isinstance(fields, dict):
        raise ApiError(
            400, f"the body must be a JSON object, got {type(fields).__name__}", code="invalid_json"
        )
    return fields
