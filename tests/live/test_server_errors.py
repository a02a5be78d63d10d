"""Bad input against a real server: the right status, OpenAI's error shape, `param` naming the field, and the
server keeps serving good requests meanwhile."""

import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from kleinserve.models import Variant

from support.images import random_image
from support.live_server import LiveServer


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    with LiveServer(
        tmp_path_factory.mktemp("server"), "--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",
        "--no-warmup",
    ) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def png(width=96, height=96) -> bytes:
    buffer = io.BytesIO()
    random_image(width, height).save(buffer, "PNG")
    return buffer.getvalue()


def assert_error(response: httpx.Response, status: int, param: str | None, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    for word in words:
        assert word in error["message"], error["message"]
    return error


GENERATION_TIMEOUT = 120  # an accepted edit renders: seconds on a busy 2-core CI machine, not 5 (httpx)
GENERATION_CASES = {
    "size 4000x4000": ({"size": "4000x4000"}, "size", "out of range"),
    "size 100x100": ({"size": "100x100"}, "size", "not a multiple of 16; use 96 or 112"),
    "size not a size": ({"size": "big"}, "size", "WIDTHxHEIGHT"),
    "size wrong type": ({"size": 1024}, "size", "must be a string"),
    "n=0": ({"n": 0}, "n", "from 1 to 4"),
    "n=100": ({"n": 100}, "n", "from 1 to 4"),
    "n wrong type": ({"n": "two"}, "n", "integer"),
    "seed wrong type": ({"seed": "abc"}, "seed", "integer"),
    "seed negative": ({"seed": -1}, "seed", "from 0"),
    "steps out of range": ({"num_inference_steps": 50}, "num_inference_steps", "from 4 to 8"),
    "guidance on distilled": ({"guidance_scale": 3.5}, "guidance_scale", "step-distilled"),
    "negative prompt on distilled": ({"negative_prompt": "x"}, "negative_prompt", "Base model"),
    "empty prompt": ({"prompt": "   "}, "prompt", "must not be empty"),
    "missing prompt": ({"prompt": None}, "prompt", "required"),
    "prompt wrong type": ({"prompt": ["a"]}, "prompt", "must be a string"),
    "transparent background": ({"background": "transparent"}, "background", "no alpha"),
    "mask": ({"mask": "x"}, "mask", "not supported"),
    "stream": ({"stream": "yes"}, "stream", "boolean"),
    "partial_images": ({"partial_images": 4}, "partial_images", "0 to 3"),
    "unknown parameter": ({"sead": 4}, "sead", "unknown parameter"),
    "response_format": ({"response_format": "jpg"}, "response_format", "'url' or 'b64_json'"),
    "output_format": ({"output_format": "gif"}, "output_format", "png, jpeg or webp"),
    "output_compression": ({"output_compression": 101}, "output_compression", "0 to 100"),
}


@pytest.mark.parametrize("case", GENERATION_CASES, ids=list(GENERATION_CASES))
def test_generation_field_errors(server, case):
    fields, param, words = GENERATION_CASES[case]
    body = {"prompt": "a fox", "size": "64x64", **fields}
    body = {k: v for k, v in body.items() if v is not None}
    response = httpx.post(server.url + "/v1/images/generations", json=body)
    error = assert_error(response, 400, param, words)
    assert error["type"] == "invalid_request_error"


def test_openai_client_raises_bad_request_with_param(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a fox", size="100x100")
    assert caught.value.body["param"] == "size" and "96 or 112" in caught.value.message


def test_unknown_model_is_404_listing_served_models(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(model="dall-e-3", prompt="a fox")
    assert caught.value.body["param"] == "model"
    assert "dall-e-3" in caught.value.message and "flux.2-klein-4b" in caught.value.message


@pytest.mark.parametrize(
    "body, words",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        (b"", "JSON"),
    ],
)
def test_malformed_json(server, body, words):
    response = httpx.post(
        server.url + "/v1/images/generations", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 400, None, words)


def edit(server, files, data=None) -> httpx.Response:
    data = {"prompt": "edit", **(data or {})}
    return httpx.post(server.url + "/v1/images/edits", files=files, data=data, timeout=GENERATION_TIMEOUT)


def test_five_images(server):
    files = [("image[]", (f"{i}.png", png(), "image/png")) for i in range(5)]
    assert_error(edit(server, files), 400, "image", "5 images", "1 to 4")


def test_zero_byte_upload(server):
    assert_error(
        edit(server, [("image", ("empty.png", b"", "image/png"))]), 400, "image", "empty.png", "empty"
    )


def test_non_image_upload(server):
    files = [("image", ("notes.txt", b"hello, not a picture", "text/plain"))]
    assert_error(edit(server, files), 400, "image", "notes.txt", "not an image")


def test_truncated_image_upload(server):
    files = [("image", ("cut.png", png()[:300], "image/png"))]
    assert_error(edit(server, files), 400, "image", "cut.png", "broken image")


def test_tiny_reference_image(server):
    files = [("image", ("small.png", png(32, 32), "image/png"))]
    assert_error(edit(server, files), 400, "image", "32x32", "at least 64")


def test_no_image_or_a_file_in_the_wrong_field(server):
    assert_error(edit(server, {"prompt": (None, "edit")}), 400, "image", "is required")
    assert_error(edit(server, {"picture": ("p.png", png(), "image/png")}), 400, "picture", "only `image`")


def test_mask_upload(server):
    files = [("image", ("a.png", png(), "image/png")), ("mask", ("m.png", png(), "image/png"))]
    assert_error(edit(server, files), 400, "mask", "not supported")


def test_edit_fields_from_multipart_strings(server):
    files = [("image", ("a.png", png(), "image/png"))]
    assert_error(edit(server, files, {"n": "lots"}), 400, "n", "integer")
    assert_error(edit(server, files, {"size": "4000x4000"}), 400, "size", "out of range")
    assert edit(server, files, {"n": "2", "seed": "7"}).status_code == 200


def test_edit_must_be_multipart_or_json(server):
    response = httpx.post(server.url + "/v1/images/edits", content=b"prompt=x",
                          headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert_error(response, 415, None, "multipart/form-data", "application/json")


def test_fifty_megabyte_body_is_413(server):
    body = json.dumps({"prompt": "x" * (50 * 1000 * 1000)}).encode()
    response = httpx.post(server.url + "/v1/images/generations", content=body,
                          headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
    assert_error(response, 413, None, "larger than")


def test_fifty_megabyte_upload_is_413_via_openai_client(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.images.edit(image=("big.png", b"\0" * (50 * 1000 * 1000), "image/png"), prompt="x")
    assert caught.value.status_code == 413


def test_chunked_body_past_the_limit_is_413(server):
    def chunks():
        for _ in range(50):
            yield b" " * 1_000_000

    response = httpx.post(server.url + "/v1/images/generations", content=chunks(),
                          headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
    assert_error(response, 413, None, "larger than")


def test_unknown_route_and_method(server):
    assert_error(httpx.get(server.url + "/v1/nothing"), 404, None, "no route")
    assert_error(httpx.get(server.url + "/v1/images/generations"), 405, None, "GET")


def test_unicode_prompt(client):
    result = client.images.generate(prompt="🦊 ein Fuchs im Schnee — 雪の中のキツネ", size="64x64")
    assert result.data[0].revised_prompt.startswith("🦊")


def test_server_keeps_serving_during_bad_requests(server, client):
    bad = [
        lambda: httpx.post(server.url + "/v1/images/generations", json={"prompt": "x", "size": "100x100"}),
        lambda: httpx.post(server.url + "/v1/images/generations", content=b"{oops"),
        lambda: edit(server, [("image", ("e.png", b"", "image/png"))]),
        lambda: edit(server, [("image", ("t.txt", b"text", "text/plain"))]),
    ] * 3
    good = [
        lambda s=s: client.images.generate(prompt="ok", size="64x64", extra_body={"seed": s})
        for s in range(4)
    ]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call) for call in bad + good]
        outcomes = [future.result() for future in futures]
    assert all(r.status_code == 400 for r in outcomes[: len(bad)])
    assert all(len(r.data) == 1 and r.data[0].url for r in outcomes[len(bad) :])
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
