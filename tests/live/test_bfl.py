"""Black Forest Labs' API (POST /v1/flux-2-klein-*, GET /v1/get_result) over HTTP, following BFL's documented
curl flow: submit with `x-key`, poll polling_url until Ready, download result.sample. The same seed gives
the same pixels as the OpenAI route; a wrong input is a 4xx naming the field, in FastAPI's `{"detail"}`
shape BFL answers with; another key's task is not found. (The AI SDK provider itself: tests/js.)"""

import base64
import hashlib
import hmac
import io
import time

import httpx
import pytest
from PIL import Image

from kleinserve.models import Variant

from support.live_server import LiveServer

KEY, OTHER_KEY = "bfl-key", "bfl-other-key"


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    with LiveServer(
        tmp_path_factory.mktemp("bfl-server"),
        "--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",
        "--api-key", KEY, "--api-key", OTHER_KEY, "--no-warmup", "--batch-wait-ms", "0",
        "--allow-private-network", "127.0.0.1/32",
    ) as live:  # fmt: skip
        yield live


def submit(server, body, model="flux-2-klein-4b", key=KEY) -> httpx.Response:
    headers = {"x-key": key} if key else {}
    return httpx.post(f"{server.url}/v1/{model}", json=body, headers=headers, timeout=60)


def ready(submitted: httpx.Response, key=KEY) -> dict:
    assert submitted.status_code == 200, submitted.text
    for _ in range(600):
        polled = httpx.get(submitted.json()["polling_url"], headers={"x-key": key}, timeout=30)
        assert polled.status_code == 200, polled.text
        if polled.json()["status"] != "Pending":
            return polled.json()
        time.sleep(0.1)
    raise AssertionError("still Pending")


def sample(result: dict) -> Image.Image:
    assert result["status"] == "Ready", result
    download = httpx.get(result["result"]["sample"], headers={"x-key": KEY}, timeout=30)
    assert download.status_code == 200
    return Image.open(io.BytesIO(download.content))


def field_error(answer: httpx.Response, field: str) -> str:
    assert answer.status_code == 422, answer.text
    [detail] = answer.json()["detail"]
    assert detail["loc"] == ["body", field]
    assert detail["msg"].startswith(f"{field}: ")
    return detail["msg"]


def test_submit_poll_download_a_jpeg_of_the_asked_size(server):
    submitted = submit(server, {"prompt": "a red balloon", "width": 128, "height": 96, "seed": 5})
    body = submitted.json()
    assert set(body) == {"id", "polling_url", "cost", "input_mp", "output_mp"}
    assert body["polling_url"] == f"{server.url}/v1/get_result?id={body['id']}"
    result = ready(submitted)
    assert result["id"] == body["id"] and result["result"]["seed"] == 5
    assert result["result"]["prompt"] == "a red balloon"
    image = sample(result)
    assert image.format == "JPEG" and image.size == (128, 96)


def test_the_same_seed_gives_the_openai_routes_pixels(server):
    body = {"prompt": "a lighthouse", "width": 96, "height": 64, "seed": 42, "output_format": "png"}
    ours = sample(ready(submit(server, body)))
    openai = httpx.post(
        f"{server.url}/v1/images/generations",
        json={"model": "flux.2-klein-4b", "prompt": "a lighthouse", "size": "96x64", "seed": 42,
              "response_format": "b64_json"},
        headers={"authorization": f"Bearer {KEY}"}, timeout=120,
    )  # fmt: skip
    assert openai.status_code == 200, openai.text
    theirs = Image.open(io.BytesIO(base64.b64decode(openai.json()["data"][0]["b64_json"])))
    assert ours.format == "PNG" and ours.tobytes() == theirs.tobytes()


def test_an_edit_from_base64_and_a_url_with_bearer_auth(server, image_host):
    reference = base64.b64encode(image_host.files["a.png"]).decode()
    body = {"prompt": "the two in snow", "input_image": reference, "input_image_2": f"{image_host.url}/b.jpg",
            "width": 64, "height": 64, "output_format": "png", "safety_tolerance": 2}  # fmt: skip
    answer = httpx.post(
        f"{server.url}/v1/flux-2-klein-4b", json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=60
    )
    assert sample(ready(answer)).size == (64, 64)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"prompt": 5}, "prompt", "string"),
        ({"prompt": "a", "seed": "7"}, "seed", "integer"),
        ({"prompt": "a", "width": 100, "height": 64}, "width", "multiple of 16"),
        ({"prompt": "a", "input_image_5": "aGVsbG8="}, "input_image_5", "at most 4"),
        ({"prompt": "a", "guidance": 3.5}, "guidance", "distilled"),
        ({"prompt": "a", "output_format": "gif"}, "output_format", "jpeg"),
        ({"prompt": "a", "webhook_url": "ftp://example.com/hook"}, "webhook_url", "http(s) URL"),
        ({"prompt": "a", "webhook_url": "http://10.1.2.3/hook"}, "webhook_url", "private"),
        ({"prompt": "a", "input_image": "not base64!"}, "input_image", "base64"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(server, body, field, words):
    assert words in field_error(submit(server, body), field)


def test_a_webhook_brings_the_result_signed_with_the_tasks_secret(server, webhooks):
    body = {"prompt": "hooked", "width": 64, "height": 64, "seed": 5, "steps": 4}
    signed = submit(server, {**body, "webhook_url": f"{webhooks.url}/bfl", "webhook_secret": "s3cret"})
    plain = submit(server, {**body, "webhook_url": f"{webhooks.url}/plain"})
    polled = ready(signed)
    (delivery,) = webhooks.deliveries("bfl", at_least=1)
    assert delivery["id"] == signed.json()["id"] and delivery["status"] == "Ready"
    assert delivery["result"]["sample"] == polled["result"]["sample"] and delivery["result"]["seed"] == 5
    headers, raw = webhooks.raw["bfl"][0]
    expected = hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest()
    assert headers["x-bfl-signature"] == f"sha256={expected}"
    assert headers["webhook-id"] == f"msg_{delivery['id']}"  # the server's Standard Webhooks signature too
    (unsigned,) = webhooks.deliveries("plain", at_least=1)
    assert unsigned["id"] == plain.json()["id"] and "x-bfl-signature" not in webhooks.raw["plain"][0][0]


def test_an_unknown_model_path_is_a_404_naming_what_is_served(server):
    answer = submit(server, {"prompt": "a"}, model="flux-2-klein-9b")
    assert answer.status_code == 404
    assert "flux-2-klein-9b" in answer.json()["detail"] and "/v1/flux-2-klein-4b" in answer.json()["detail"]
    other = submit(server, {"prompt": "a"}, model="flux-2-pro")
    assert other.status_code == 404 and "flux-2-pro" in other.json()["detail"]
    assert httpx.post(f"{server.url}/v1/models", json={}, headers={"x-key": KEY}).status_code == 405


def test_another_keys_task_and_a_missing_key(server):
    submitted = submit(server, {"prompt": "a kite", "width": 64, "height": 64})
    task = submitted.json()["id"]
    theirs = httpx.get(f"{server.url}/v1/get_result", params={"id": task}, headers={"x-key": OTHER_KEY})
    assert theirs.status_code == 404 and theirs.json()["status"] == "Task not found"
    missing = submit(server, {"prompt": "a"}, key=None)
    assert missing.status_code == 401 and "x-key" in missing.json()["detail"]
    assert submit(server, {"prompt": "a"}, key="wrong").status_code == 401
    assert ready(submitted)["status"] == "Ready"
