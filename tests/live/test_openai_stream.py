"""OpenAI's streamed images (`stream: true`, `partial_images`) and JSON edits (`images: [{"image_url"}]`),
through the unmodified openai-python client and plain httpx, against a real server on 127.0.0.1."""

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from kleinserve.models import Variant

from support.images import data_uri, random_image
from support.live_server import LiveServer

TIMEOUT = 120


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    with LiveServer(
        tmp_path_factory.mktemp("server"),
        "--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",
        "--allow-private-network", "127.0.0.1/32", "--image-fetch-timeout-s", "5",
    ) as live:  # fmt: skip
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def sse(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) of each server-sent event, comments skipped."""
    events = []
    for frame in response.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines() if not line.startswith(":"))
        if lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def assert_error(response: httpx.Response, param: str, *words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    for word in words:
        assert word in error["message"], error["message"]


def test_streamed_generate_partials_then_the_same_image(client):
    arguments = {"model": "flux.2-klein-4b", "prompt": "a red fox", "size": "128x80"}
    stream = client.images.generate(**arguments, stream=True, partial_images=2, extra_body={"seed": 11})
    events = list(stream)
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"
    ]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    for event in events:
        assert event.size == "128x80" and event.output_format == "png" and event.background == "opaque"
        assert event.quality == "auto" and isinstance(event.created_at, int)
        assert pixels(event.b64_json).shape == (80, 128, 3)
    completed = events[-1]
    assert completed.usage.total_tokens == completed.usage.input_tokens + completed.usage.output_tokens
    assert completed.usage.input_tokens_details.text_tokens > 0
    plain = client.images.generate(**arguments, response_format="b64_json", extra_body={"seed": 11})
    assert np.array_equal(pixels(completed.b64_json), pixels(plain.data[0].b64_json))
    assert completed.usage.output_tokens == plain.usage.output_tokens
    assert not np.array_equal(pixels(events[0].b64_json), pixels(completed.b64_json))


def test_stream_without_partial_images_sends_only_the_completed_event(server):
    body = {"prompt": "a boat", "size": "64x64", "stream": True, "seed": 3, "output_format": "jpeg"}
    response = httpx.post(server.url + "/v1/images/generations", json=body, timeout=TIMEOUT)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"]
    [(name, data)] = sse(response)
    assert name == data["type"] == "image_generation.completed"
    assert set(data) == {"type", "b64_json", "created_at", "size", "quality", "background", "output_format",
                         "usage"}  # fmt: skip
    assert data["output_format"] == "jpeg" and base64.b64decode(data["b64_json"])[:2] == b"\xff\xd8"


def test_stream_with_n_2_sends_each_image(server):
    body = {"prompt": "two", "size": "64x64", "n": 2, "stream": True, "partial_images": 1, "seed": 4}
    events = sse(httpx.post(server.url + "/v1/images/generations", json=body, timeout=TIMEOUT))
    names = [name for name, _ in events]
    assert names == ["image_generation.partial_image"] * 2 + ["image_generation.completed"] * 2
    plain = httpx.post(
        server.url + "/v1/images/generations",
        json={**body, "stream": False, "response_format": "b64_json"}, timeout=TIMEOUT,
    ).json()  # fmt: skip
    for (_, data), item in zip(events[2:], plain["data"], strict=True):
        assert np.array_equal(pixels(data["b64_json"]), pixels(item["b64_json"]))


def test_streamed_edit_through_the_client(client):
    image = ("ref.png", png(random_image(96, 64, seed=1)), "image/png")
    stream = client.images.edit(
        image=image, prompt="make it blue", stream=True, partial_images=1, extra_body={"seed": 21}
    )
    events = list(stream)
    assert [event.type for event in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert events[0].partial_image_index == 0 and events[1].size == "96x64"
    plain = client.images.edit(image=image, prompt="make it blue", extra_body={"seed": 21})
    assert np.array_equal(pixels(events[1].b64_json), pixels(plain.data[0].b64_json))


def test_json_edit_equals_the_multipart_edit(server, client, image_host):
    reference = png(random_image(96, 64, seed=2))
    body = {
        "prompt": "in snow", "seed": 5, "response_format": "b64_json",
        "images": [{"image_url": data_uri(Image.open(io.BytesIO(reference)))},
                   {"image_url": f"{image_host.url}/d.png"}],
    }  # fmt: skip
    response = httpx.post(server.url + "/v1/images/edits", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.json()["size"] == "96x64"
    d_png = httpx.get(f"{image_host.url}/d.png").content
    plain = client.images.edit(
        image=[("a.png", reference, "image/png"), ("d.png", d_png, "image/png")], prompt="in snow",
        response_format="b64_json", extra_body={"seed": 5},
    )  # fmt: skip
    assert np.array_equal(pixels(response.json()["data"][0]["b64_json"]), pixels(plain.data[0].b64_json))


def test_json_edit_streamed_through_the_clients_post(client, image_host):
    body = {"prompt": "at night", "images": [{"image_url": f"{image_host.url}/a.png"}], "partial_images": 1,
            "stream": True, "seed": 6}  # fmt: skip
    stream = client.post(
        "/images/edits", body=body, cast_to=object, stream=True,
        stream_cls=openai.Stream[openai.types.ImageEditStreamEvent],
    )  # fmt: skip
    assert [event.type for event in stream] == ["image_edit.partial_image", "image_edit.completed"]


BAD_GENERATIONS = {
    "partial_images=4": ({"partial_images": 4}, "partial_images", "0 to 3"),
    "partial_images='x'": ({"partial_images": "x"}, "partial_images", "integer"),
    "partial_images=true": ({"partial_images": True}, "partial_images", "0 to 3"),
    "stream='yes'": ({"stream": "yes"}, "stream", "boolean"),
    "stream=1": ({"stream": 1}, "stream", "boolean"),
}


@pytest.mark.parametrize("case", BAD_GENERATIONS, ids=list(BAD_GENERATIONS))
def test_bad_stream_fields_are_400_before_any_stream(server, case):
    fields, param, words = BAD_GENERATIONS[case]
    body = {"prompt": "a fox", "size": "64x64", "stream": True, **fields}
    assert_error(httpx.post(server.url + "/v1/images/generations", json=body), param, words)


def test_bad_stream_fields_in_a_multipart_edit(server):
    files = [("image", ("a.png", png(random_image(64, 64)), "image/png"))]
    for fields, param in (({"partial_images": "4"}, "partial_images"), ({"stream": "yes"}, "stream")):
        response = httpx.post(
            server.url + "/v1/images/edits", files=files, data={"prompt": "x", "stream": "true", **fields}
        )
        assert_error(response, param)


def test_client_raises_bad_request_for_partial_images(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a fox", size="64x64", stream=True, partial_images=4)
    assert caught.value.body["param"] == "partial_images"


def bad_edit(server, images, param, *words):
    response = httpx.post(server.url + "/v1/images/edits", json={"prompt": "x", "images": images}, timeout=30)
    assert_error(response, param, *words)


def test_json_edit_errors(server, image_host):
    good = {"image_url": f"{image_host.url}/a.png"}
    bad_edit(server, [good] * 5, "images", "5 images", "1 to 4")
    bad_edit(server, [], "images", "1 to 4")
    bad_edit(server, "a.png", "images", "list")
    bad_edit(server, [{"image_url": f"{image_host.url}/missing.png"}], "images[0].image_url", "404")
    bad_edit(server, [good, {"image_url": "http://10.1.2.3/a.png"}], "images[1].image_url", "private")
    bad_edit(server, [{"image_url": "data:image/png;base64,%%%"}], "images[0].image_url", "base64")
    bad_edit(server, [{"file_id": "file-123"}], "images[0].file_id", "image_url")
    bad_edit(server, [{"url": "x"}], "images[0]", "image_url")
    response = httpx.post(server.url + "/v1/images/edits", json={"prompt": "x", "image": [good]})
    assert_error(response, "image", "unknown parameter")
    response = httpx.post(server.url + "/v1/images/edits", json={"prompt": "x"})
    assert_error(response, "images", "list")
    bad_model = {"prompt": "x", "model": {}, "images": [good]}
    assert_error(httpx.post(server.url + "/v1/images/edits", json=bad_model), "model", "string")


def test_other_content_types_are_415(server):
    headers = {"content-type": "text/plain"}
    response = httpx.post(server.url + "/v1/images/edits", content=b"x", headers=headers)
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]["message"]


def test_client_leaving_mid_stream_cancels_only_its_own_job(server):
    body = {"prompt": "leave", "size": "1024x1024", "n": 4, "stream": True, "partial_images": 3,
            "output_format": "jpeg", "num_inference_steps": 8}  # fmt: skip
    with ThreadPoolExecutor(1) as pool:
        with httpx.stream("POST", server.url + "/v1/images/generations", json=body, timeout=TIMEOUT) as left:
            job_id = left.headers["x-request-id"]
            other = pool.submit(
                httpx.post, server.url + "/v1/images/generations",
                json={"prompt": "stay", "size": "64x64", "stream": True}, timeout=TIMEOUT,
            )  # fmt: skip
            assert next(left.iter_lines()) == "event: image_generation.partial_image"
        assert sse(other.result())[-1][0] == "image_generation.completed"
    for _ in range(100):
        job = httpx.get(f"{server.url}/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert job["status"] == "cancelled", job


def test_openapi_documents_both_edit_bodies_and_the_event_stream(server):
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    edits = paths["/v1/images/edits"]["post"]
    assert set(edits["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    json_body = edits["requestBody"]["content"]["application/json"]["schema"]
    assert json_body["properties"]["images"]["maxItems"] == 4 and "image" not in json_body["properties"]
    for operation in (edits, paths["/v1/images/generations"]["post"]):
        assert {"application/json", "text/event-stream"} <= set(operation["responses"]["200"]["content"])
        assert "partial_images" in str(operation["requestBody"])


@pytest.fixture(scope="module")
def keyed(checkpoints, tmp_path_factory):
    with LiveServer(
        tmp_path_factory.mktemp("keyed"), "--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",
        "--api-key", "key-a", "--api-key", "key-b", "--no-warmup",
    ) as live:  # fmt: skip
        yield live


def test_a_streamed_request_counts_and_belongs_to_its_key_as_a_plain_one(keyed):
    a, b = ({"Authorization": f"Bearer {key}"} for key in ("key-a", "key-b"))
    body = {"prompt": "owned", "size": "64x64", "n": 2, "stream": True, "partial_images": 1}
    refused = httpx.post(keyed.url + "/v1/images/generations", json=body)
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    response = httpx.post(keyed.url + "/v1/images/generations", json=body, headers=a, timeout=TIMEOUT)
    assert [name for name, _ in sse(response)][-1] == "image_generation.completed"
    job_id = response.headers["x-request-id"]
    assert httpx.get(f"{keyed.url}/v1/jobs/{job_id}", headers=a).json()["status"] == "succeeded"
    assert httpx.get(f"{keyed.url}/v1/jobs/{job_id}", headers=b).status_code == 404
    totals = httpx.get(f"{keyed.url}/v1/usage", headers=a).json()["totals"]
    assert totals["requests"] == 1 and totals["images"] == 2
    assert httpx.get(f"{keyed.url}/v1/usage", headers=b).json()["totals"]["requests"] == 0
    stats = httpx.get(keyed.url + "/v1/stats", headers=a).json()["models"]["flux.2-klein-4b"]
    assert stats["requests"] >= 1 and stats["success_rate"] == 1.0
