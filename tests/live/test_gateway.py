"""The Vercel AI Gateway image dialect (POST /v1/ai/image-model) over HTTP, as @ai-sdk/gateway calls it:
the model in the ai-model-id header, the key as a Bearer token, images back as base64 PNGs; the same seed
gives the same pixels as the OpenAI route; a wrong input is a 4xx naming what is wrong, in the
`{error: {message, type, param}}` shape the gateway client reads. (The client itself: tests/js.)"""

import base64
import io

import httpx
import pytest
from PIL import Image

from kleinserve.models import Variant

from support.live_server import LiveServer

KEY = "gateway-key"
MODEL = "bfl/flux-2-klein-4b"


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    with LiveServer(
        tmp_path_factory.mktemp("gateway-server"),
        "--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",
        "--api-key", KEY, "--no-warmup", "--batch-wait-ms", "0",
    ) as live:  # fmt: skip
        yield live


def post(server, body, model: str | None = MODEL, key: str = KEY) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "ai-gateway-protocol-version": "0.0.1"}
    if model is not None:
        headers["ai-model-id"] = model
    return httpx.post(f"{server.url}/v1/ai/image-model", json=body, headers=headers, timeout=120)


def png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    assert image.format == "PNG"
    return image


def test_a_generation_is_a_png_of_the_asked_size_with_its_seed_and_usage(server):
    answer = post(server, {"prompt": "a red balloon", "n": 2, "size": "128x96", "seed": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [png(image).size for image in body["images"]] == [(128, 96), (128, 96)]
    assert body["warnings"] == []
    metadata = body["providerMetadata"]["kleinserve"]
    assert [entry["seed"] for entry in metadata["images"]] == [5, 6]
    assert metadata["seed"] == 5 and metadata["model"] == "flux.2-klein-4b" and metadata["timings"]
    usage = body["usage"]
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"] > 0
    assert answer.headers["x-request-id"] == metadata["jobId"]


def test_the_same_seed_gives_the_openai_routes_pixels(server):
    gateway = post(server, {"prompt": "a lighthouse", "n": 1, "size": "96x64", "seed": 42})
    openai = httpx.post(
        f"{server.url}/v1/images/generations",
        json={"model": "flux.2-klein-4b", "prompt": "a lighthouse", "size": "96x64", "seed": 42,
              "response_format": "b64_json"},
        headers={"authorization": f"Bearer {KEY}"}, timeout=120,
    )  # fmt: skip
    assert gateway.status_code == openai.status_code == 200, gateway.text + openai.text
    ours, theirs = png(gateway.json()["images"][0]), png(openai.json()["data"][0]["b64_json"])
    assert ours.tobytes() == theirs.tobytes()


def test_aspect_ratio_steps_and_an_edit_from_a_base64_file(server):
    reference = post(server, {"prompt": "a cat", "n": 1, "size": "64x96", "seed": 1}).json()["images"][0]
    answer = post(server, {
        "prompt": "the cat in snow", "n": 1, "aspectRatio": "1:1",
        "providerOptions": {"bfl": {"steps": 4, "raw": True}, "gateway": {"order": ["bfl"]}},
        "files": [{"type": "file", "mediaType": "image/png", "data": reference}],
    })  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert png(answer.json()["images"][0]).size == (1024, 1024)
    [warning] = answer.json()["warnings"]
    assert warning["type"] == "unsupported" and warning["feature"] == "providerOptions.bfl.raw"


FILE = {"type": "file", "mediaType": "image/png", "data": "iVBORw0KGgo="}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"n": 1}, "prompt"),
        ({"prompt": 5, "n": 1}, "prompt"),
        ({"prompt": "x", "n": 5}, "n"),
        ({"prompt": "x", "n": "2"}, "n"),
        ({"prompt": "x", "n": 1, "size": "100x100"}, "size"),
        ({"prompt": "x", "n": 1, "size": 512}, "size"),
        ({"prompt": "x", "n": 1, "aspectRatio": "16x9"}, "aspectRatio"),
        ({"prompt": "x", "n": 1, "size": "512x512", "aspectRatio": "1:1"}, "aspectRatio"),
        ({"prompt": "x", "n": 1, "seed": -1}, "seed"),
        ({"prompt": "x", "n": 1, "seed": "7"}, "seed"),
        ({"prompt": "x", "n": 1, "providerOptions": {"bfl": {"steps": 50}}}, "providerOptions.bfl.steps"),
        (
            {"prompt": "x", "n": 1, "providerOptions": {"blackForestLabs": {"guidance": 3}}},
            "providerOptions.blackForestLabs.guidance",
        ),
        ({"prompt": "x", "n": 1, "providerOptions": {"bfl": 3}}, "providerOptions.bfl"),
        ({"prompt": "x", "n": 1, "files": [FILE] * 5}, "files"),
        ({"prompt": "x", "n": 1, "files": [{"type": "file", "data": 3}]}, "files[0].data"),
        ({"prompt": "x", "n": 1, "files": [{**FILE, "data": "AAAA"}]}, "files[0]"),
        ({"prompt": "x", "n": 1, "mask": FILE}, "mask"),
        ({"prompt": "x", "n": 1, "style": "vivid"}, "style"),
    ],
)
def test_a_wrong_input_is_a_400_naming_the_field(server, body, field):
    answer = post(server, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == field, error
    assert error["message"].startswith(f"{field}: "), error


def test_the_model_header_is_required_and_names_a_served_model(server):
    missing = post(server, {"prompt": "x", "n": 1}, model=None)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "ai-model-id", missing.text
    unknown = post(server, {"prompt": "x", "n": 1}, model="bfl/flux-2-klein-9b")
    assert unknown.status_code == 404, unknown.text
    error = unknown.json()["error"]
    assert error["type"] == "model_not_found" and error["param"] == {"modelId": "bfl/flux-2-klein-9b"}
    assert "bfl/flux-2-klein-9b" in error["message"] and "served: bfl/flux-2-klein-4b" in error["message"]


def test_the_api_key_applies_and_a_generation_counts_for_its_key(server):
    refused = post(server, {"prompt": "x", "n": 1}, key="wrong")
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    before = usage_totals(server)
    assert post(server, {"prompt": "x", "n": 2, "size": "64x64"}).status_code == 200
    after = usage_totals(server)
    assert (after["requests"], after["images"]) == (before["requests"] + 1, before["images"] + 2)


def usage_totals(server) -> dict:
    usage = httpx.get(f"{server.url}/v1/usage", headers={"authorization": f"Bearer {KEY}"}, timeout=30)
    assert usage.status_code == 200, usage.text
    assert usage.json()["key"] and not usage.json()["admin"]
    return usage.json()["totals"]
