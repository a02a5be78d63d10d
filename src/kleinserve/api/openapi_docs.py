"""What /openapi.json says about each route beyond what FastAPI infers: the request body (each dialect's
schema, the pydantic model the route validates the body with, written inline) and every answer, in the
error shape of the route's dialect. Constraints between fields (steps and guidance depend on the model,
seed + n must fit) are beyond a schema: the server answers those with 400 / 422.
"""

from __future__ import annotations

from pydantic import BaseModel

# Statuses any API route can answer before its handler runs: keys, sizes, rate limits, hosts, slow bodies.
GATE = (400, 401, 408, 413, 429)
SERVICE = (500, 503, 507)  # a failed generation; queue full, loading or shutting down; disk full


def json_body(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _schema(model)}}}}


def multipart_body(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _schema(model)}}}}


def answers(ok: type[BaseModel] | None, error: type[BaseModel], *statuses: int, media: str = "") -> dict:
    """`responses=` for a route: its 200 (a model, or a media type such as text/event-stream) and errors."""
    documented: dict[int | str, dict] = {}
    if media:
        documented[200] = {"description": "OK", "content": {kind: {} for kind in media.split(",")}}
    elif ok is not None:
        documented[200] = {"model": ok, "description": "OK"}
    for status in sorted({*GATE, *statuses}):
        documented[status] = {"model": error, "description": "error (see the message)"}
    return documented


def _schema(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return _inline(schema, schema.pop("$defs", {}))


def _inline(node, definitions: dict):
    """Request schemas are written inline (no component references to register)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(dict(definitions[node["$ref"].rsplit("/", 1)[-1]]), definitions)
        return {key: _inline(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    return node
