"""The real `openai` package against a real kleinserve on 127.0.0.1: images equal the engine's exactly."""

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from kleinserve.models import Variant
from kleinserve.request import build_request

from support.images import random_image
from support.live_server import LiveServer

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    with LiveServer(
        tmp_path_factory.mktemp("server"),
        "--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",
        "--model", f"flux.2-klein-base-4b={checkpoints[Variant.BASE]}",
        "--batch-wait-ms", "150",
    ) as live:  # fmt: skip
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def engine_images(engine, **kwargs) -> list[np.ndarray]:
    return engine.generate([build_request(engine.spec, **kwargs)])[0].images


def fetch(url: str) -> Image.Image:
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def decode_b64(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_generate_matches_engine(client, server, engine, response_format):
    result = client.images.generate(
        model="flux.2-klein-4b", prompt="a red fox", size="128x80", n=2,
        response_format=response_format, extra_body={"seed": 11},
    )  # fmt: skip
    assert len(result.data) == 2
    assert result.size == "128x80" and result.output_format == "png"
    assert result.model_extra["seed"] == 11
    expected = engine_images(engine, prompt="a red fox", width=128, height=80, seed=11, num_images=2)
    for item, pixels in zip(result.data, expected, strict=True):
        image = fetch(item.url) if response_format == "url" else decode_b64(item.b64_json)
        assert image.format == "PNG" and image.size == (128, 80)
        assert np.array_equal(np.asarray(image.convert("RGB")), pixels)
    if response_format == "url":
        assert result.data[0].b64_json is None and result.data[0].url.startswith(server.url + "/files/")
    else:
        assert result.data[0].url is None


@pytest.mark.parametrize("size", ["64x64", "256x128", "96x208"])
def test_sizes(client, engine, size):
    result = client.images.generate(prompt="a lighthouse", size=size, extra_body={"seed": 5})
    width, height = map(int, size.split("x"))
    image = fetch(result.data[0].url)
    assert image.size == (width, height)
    expected = engine_images(engine, prompt="a lighthouse", width=width, height=height, seed=5)[0]
    assert np.array_equal(np.asarray(image), expected)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_output_formats(client, server, engine, fmt, response_format):
    result = client.images.generate(
        prompt="a boat", size="128x128", output_format=fmt, output_compression=80,
        response_format=response_format, extra_body={"seed": 3},
    )  # fmt: skip
    assert result.output_format == fmt
    if response_format == "url":
        response = httpx.get(result.data[0].url)
        assert response.headers["content-type"] == f"image/{fmt}"
        image = Image.open(io.BytesIO(response.content))
    else:
        image = decode_b64(result.data[0].b64_json)
    assert image.format == FORMATS[fmt] and image.size == (128, 128)
    pixels = np.asarray(image.convert("RGB")).astype(int)
    same = engine_images(engine, prompt="a boat", width=128, height=128, seed=3)[0]
    other = engine_images(engine, prompt="a boat", width=128, height=128, seed=4)[0]
    error = np.abs(pixels - same).mean()
    if fmt == "png":
        assert error == 0
    else:  # lossy: close to this seed's image, far from another seed's
        assert error < 0.5 * np.abs(pixels - other).mean()


@pytest.mark.parametrize("count", [1, 2, 4])
def test_edit_matches_engine(client, engine, count):
    references = [random_image(96 + 16 * i, 80, seed=i) for i in range(count)]
    files = [(f"ref{i}.png", png_bytes(image), "image/png") for i, image in enumerate(references)]
    result = client.images.edit(
        model="flux-2-klein-4b", image=files[0] if count == 1 else files, prompt="make it blue",
        extra_body={"seed": 21},
    )  # fmt: skip
    image = fetch(result.data[0].url)
    assert image.size == (96, 80)  # the first reference's size
    expected = engine_images(engine, prompt="make it blue", images=references, seed=21)[0]
    assert np.array_equal(np.asarray(image), expected)


def test_base_model_guidance_and_negative_prompt(client, engines):
    result = client.images.generate(
        model="flux.2-klein-base-4b", prompt="a cat", size="64x64",
        extra_body={"seed": 2, "num_inference_steps": 3, "guidance_scale": 2.5, "negative_prompt": "blurry"},
    )  # fmt: skip
    engine = engines[Variant.BASE]
    expected = engine_images(
        engine, prompt="a cat", width=64, height=64, seed=2, steps=3, guidance=2.5, negative_prompt="blurry"
    )[0]
    assert np.array_equal(np.asarray(fetch(result.data[0].url)), expected)


def test_concurrent_requests_are_batched_and_each_gets_its_own_image(client, server, engine):
    def batch_counts() -> tuple[float, float]:
        text = httpx.get(server.url + "/metrics").text
        values = {}
        for line in text.splitlines():
            if line.startswith("kleinserve_batch_images_") and 'model="flux.2-klein-4b"' in line:
                values[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
        return values.get("kleinserve_batch_images_count", 0), values.get("kleinserve_batch_images_sum", 0)

    batches_before, images_before = batch_counts()
    seeds = [101, 102, 103, 104]
    with ThreadPoolExecutor(len(seeds)) as pool:
        results = list(
            pool.map(
                lambda s: client.images.generate(prompt=f"seed {s}", size="64x96", extra_body={"seed": s}),
                seeds,
            )
        )
    batches, images = batch_counts()
    assert images - images_before == 4
    assert batches - batches_before < 4, "four concurrent compatible requests ran as four batches"
    for seed, result in zip(seeds, results, strict=True):
        expected = engine_images(engine, prompt=f"seed {seed}", width=64, height=96, seed=seed)[0]
        assert np.array_equal(np.asarray(fetch(result.data[0].url)), expected)


def test_models_endpoint(client):
    ids = [model.id for model in client.models.list()]
    assert ids == ["flux.2-klein-4b", "flux.2-klein-base-4b"]
    assert client.models.retrieve("black-forest-labs/FLUX.2-klein-4B").id == "flux.2-klein-4b"
    with pytest.raises(openai.NotFoundError, match=r"flux\.2-klein-9b"):
        client.models.retrieve("flux.2-klein-9b")


def test_job_record(client, server):
    result = client.images.generate(prompt="a job", size="64x64", extra_body={"seed": 1})
    job = httpx.get(f"{server.url}/v1/jobs/{result.model_extra['job_id']}").json()
    assert job["status"] == "succeeded" and job["model"] == "flux.2-klein-4b"
    assert job["params"]["seed"] == 1 and job["params"]["prompt"] == "a job"
    assert job["result"]["images"][0]["key"].endswith("/0.png")
    assert set(job["result"]["timings"]) >= {"queue", "text", "denoise", "decode", "encode", "store"}
    messages = [entry["message"] for entry in job["logs"]]
    assert messages[0].startswith("queued") and "step 4/4" in messages and messages[-1] == "succeeded"


def test_stats_report_what_gateways_show(client, server):
    client.images.generate(prompt="for stats", size="64x64")
    with pytest.raises(openai.BadRequestError):
        client.images.generate(prompt="", size="64x64")
    stats = httpx.get(server.url + "/v1/stats").json()["models"]["flux.2-klein-4b"]
    assert stats["requests"] >= 2 and stats["rejected"] >= 1 and stats["success_rate"] == 1.0
    for key in ("generation_ms", "time_to_first_byte_ms"):
        assert 0 < stats[key]["p50"] <= stats[key]["p95"]


def test_response_format_omitted_gives_b64_json_and_the_stored_url(client, engine):
    raw = client.images.with_raw_response.generate(
        prompt="a lighthouse", size="96x64", n=2, extra_body={"seed": 8}
    )
    result = raw.parse()
    expected = engine_images(engine, prompt="a lighthouse", width=96, height=64, seed=8, num_images=2)
    for item, pixels in zip(result.data, expected, strict=True):
        inline = base64.b64decode(item.b64_json)
        assert httpx.get(item.url).content == inline  # the same file, inline and stored
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(inline))), pixels)
    assert raw.headers["x-request-id"] == result.model_extra["job_id"]
    assert result.quality == "auto"


def test_usage_counts_text_reference_and_output_tokens(client, engine):
    prompt = "a small red boat on a calm lake at dawn"
    text_tokens = engine.prompts.count_tokens(prompt)
    assert 10 < text_tokens < 60  # the chat template and the prompt, no padding
    result = client.images.generate(prompt=prompt, size="128x96", n=2, quality="high")
    assert result.quality == "high"
    output = 2 * (128 // 16) * (96 // 16)
    assert result.usage.model_dump() == {
        "input_tokens": text_tokens, "output_tokens": output, "total_tokens": text_tokens + output,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
        "output_tokens_details": {"text_tokens": 0, "image_tokens": output},
    }  # fmt: skip
    references = [random_image(160, 80, seed=1), random_image(64, 64, seed=2)]
    files = [(f"r{i}.png", png_bytes(image), "image/png") for i, image in enumerate(references)]
    edit = client.images.edit(image=files, prompt=prompt, response_format="b64_json")
    assert edit.data[0].url is None and edit.data[0].b64_json
    assert edit.usage.input_tokens_details.image_tokens == 10 * 5 + 4 * 4
    assert edit.usage.output_tokens == 10 * 5  # the first reference's size


def test_every_response_has_a_request_id(client, server):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="x", size="100x100")
    assert caught.value.param == "size" and caught.value.request_id.startswith("req_")
    bad_quality = {"prompt": "x", "quality": "ultra"}
    responses = [httpx.get(server.url + "/v1/models"), httpx.get(server.url + "/health"),
                 httpx.post(server.url + "/v1/images/generations", json=bad_quality)]  # fmt: skip
    for response in responses:
        assert response.headers["x-request-id"]
    assert response.status_code == 400 and response.json()["error"]["param"] == "quality"
