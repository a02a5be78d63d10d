"""The console: the playground page at `/`, the status page at `/status`, their static files, and the facts
the pages need (`/console/config.json`).

The pages are static files shipped in the package (kleinserve/console/), served with a strict
Content-Security-Policy: nothing loads from anywhere but this server, so the console works air-gapped.
They load without an API key (access.py leaves these paths open); the API calls the pages make carry the key
the user types. config.json tells what /v1/models tells any caller, plus whether keys are needed.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from kleinserve.api.errors import ApiError
from kleinserve.api.fal.routes import ENDPOINT_PREFIX
from kleinserve.api.fal.schemas import DEFAULT_PRESET, PRESETS, step_range
from kleinserve.api.gateway.routes import gateway_id
from kleinserve.api.replicate.catalog import replicate_name
from kleinserve.imaging import OUTPUT_FORMATS
from kleinserve.request import MAX_LORA_SCALE, MAX_LORAS
from kleinserve.service.facade import ImageService
from kleinserve.service.served_models import ServedModel

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
# images: this server's files, data: URIs (step previews, uploads) and blob: (thumbnails); fetch: this server
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
PAGES = {"/": "index.html", "/status": "status.html"}


def router(service: ImageService) -> APIRouter:
    routes = APIRouter(include_in_schema=False)

    @routes.get("/")
    async def playground() -> Response:
        return _file("index.html")

    @routes.get("/status")
    async def status() -> Response:
        return _file("status.html")

    @routes.get("/console/config.json")
    async def config() -> JSONResponse:
        return JSONResponse(_config(service), headers=HEADERS)

    @routes.get("/console/{name}")
    async def asset(name: str) -> Response:
        return _file(name)

    return routes


def _file(name: str) -> Response:
    """A file of the console folder: only plain names with a known type (no paths, nothing hidden)."""
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    folder = resources.files("kleinserve") / "console"
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in CONTENT_TYPES:
        raise ApiError(404, f"no console file {name[:100]!r}", code="not_found")
    path = folder / name
    if not path.is_file():
        raise ApiError(404, f"no console file {name[:100]!r}", code="not_found")
    return Response(path.read_bytes(), media_type=CONTENT_TYPES[suffix], headers=HEADERS)


def _config(service: ImageService) -> dict:
    settings = service.settings
    return {
        "models": [_model(served) for served in service.models],
        "size_presets": {name: {"width": w, "height": h} for name, (w, h) in PRESETS.items()},
        "default_size_preset": DEFAULT_PRESET,
        "output_formats": list(OUTPUT_FORMATS),
        "api_key_required": bool(settings.api_keys),
        "max_loras": MAX_LORAS,
        "max_lora_scale": MAX_LORA_SCALE,
    }


def _model(served: ServedModel) -> dict:
    spec = served.spec
    endpoint = next((a for a in spec.aliases if a.startswith(ENDPOINT_PREFIX)), None)
    low, high = step_range(spec)  # the console sends through fal's stream route: its range (4..50 on Base)
    return {
        "id": spec.id,
        "fal_endpoint": endpoint,
        "replicate_model": replicate_name(served),  # None: Replicate has no such model
        "gateway_model": gateway_id(served),
        "state": served.state,
        "demo": served.demo,
        "variant": spec.variant.value,
        "uses_cfg": spec.uses_cfg,
        "default_steps": spec.default_steps,
        "min_steps": low,
        "max_steps": high,
        "default_guidance": spec.default_guidance,
        "default_negative_prompt": spec.default_negative_prompt,
        "max_images": spec.max_images,
        "max_reference_images": spec.max_reference_images,
        "size_multiple": spec.size_multiple,
        "min_side": spec.min_side,
        "max_side": spec.max_side,
    }
