"""Per-request LoRA through a real server: fal /lora and /edit/lora, the queue, OpenAI's `loras`, each image
equal to the in-process engine's with the same LoRAs (tests/engine/test_lora_parity.py ties that to
diffusers); and each bad LoRA input a 4xx naming the field, the server serving on."""

import base64
import hashlib
import io
from http.server import BaseHTTPRequestHandler

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from kleinserve.models import Variant
from kleinserve.request import build_request

from support.fal_queue import result, status, submit, wait_until
from support.images import data_uri, random_image
from support.live_server import LiveServer, free_port
from support.local_hosts import LocalHost
from support.lora_files import linear_shapes, write_kohya_lora, write_misfit_lora, write_peft_lora

FAL = "fal-ai/flux-2/klein/4b"
SMALL = {"width": 64, "height": 64}


class LoraHost(LocalHost):
    """GET /{name} serves a file's bytes as application/octet-stream."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.gets: list[str] = []
        super().__init__(_FileHandler)


class _FileHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.owner.gets.append(self.path.lstrip("/"))
        data = self.server.owner.files.get(self.path.lstrip("/"))
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args):
        pass


class Trap:
    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickled')",))


@pytest.fixture(scope="module")
def loras(checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-dir")
    shapes = linear_shapes(checkpoints[Variant.DISTILLED])
    write_peft_lora(folder / "style.safetensors", shapes, seed=1)
    write_misfit_lora(folder / "wide.safetensors", shapes)
    torch.save({"x": Trap()}, folder / "trap.safetensors")
    (folder / "notes.safetensors").write_text("not a LoRA")
    (tmp_path_factory.mktemp("outside") / "secret.safetensors").write_bytes(b"x")
    hosted = write_kohya_lora(folder.parent / "hosted.safetensors", shapes, seed=2, strength=0.8)
    host = LoraHost({"hosted.safetensors": hosted.read_bytes()})
    yield folder, host, hosted
    host.close()


@pytest.fixture(scope="module")
def server(checkpoints, loras, tmp_path_factory):
    lora_dir, _, _ = loras
    flags = ["--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}", "--no-warmup",
             "--batch-wait-ms", "0", "--lora-dir", str(lora_dir),
             "--allow-private-network", "127.0.0.1/32"]  # fmt: skip
    server = LiveServer(tmp_path_factory.mktemp("lora-server"), *flags).start()
    yield server
    server.stop()


def engine_image(engine, loras, **fields) -> np.ndarray:
    request = build_request(engine.spec, loras=loras, **fields)
    return engine.generate([request])[0].images[0]


def picture(url_or_data: str) -> np.ndarray:
    if url_or_data.startswith("data:"):
        data = base64.b64decode(url_or_data.split(",", 1)[1])
    else:
        data = httpx.get(url_or_data, timeout=30).content
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert np.abs(actual.astype(int) - expected.astype(int)).max() <= 2  # 2/255


def fal(server, endpoint: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/{endpoint}", json=body, timeout=120)


def test_fal_lora_endpoint_matches_the_engine(server, loras, engine):
    lora_dir, host, hosted = loras
    body = {"prompt": "a red boat", "image_size": SMALL, "seed": 3,
            "loras": [{"path": "style.safetensors", "scale": 0.5},
                      {"path": f"{host.url}/hosted.safetensors", "scale": 1.5}]}  # fmt: skip
    answer = fal(server, f"{FAL}/lora", body)
    assert answer.status_code == 200, answer.text
    local = [{"path": str(lora_dir / "style.safetensors"), "scale": 0.5}, {"path": str(hosted), "scale": 1.5}]
    expected = engine_image(engine, local, prompt="a red boat", width=64, height=64, seed=3)
    assert_close(picture(answer.json()["images"][0]["url"]), expected)
    plain = fal(server, FAL, {"prompt": "a red boat", "image_size": SMALL, "seed": 3})
    assert np.abs(picture(plain.json()["images"][0]["url"]).astype(int) - expected).max() > 10


def test_fal_edit_lora_through_the_queue_matches_the_engine(server, loras, engine):
    lora_dir, _, _ = loras
    reference = random_image(96, 80, seed=4)
    body = {"prompt": "make it snow", "image_urls": [data_uri(reference)], "seed": 5,
            "loras": [{"path": "style.safetensors", "scale": 1.5}]}  # fmt: skip
    job_id = submit(server.url, body, endpoint=f"{FAL}/edit/lora")
    wait_until(lambda: status(server.url, job_id)["status"] == "COMPLETED")
    output = result(server.url, job_id)
    expected = engine_image(
        engine, [{"path": str(lora_dir / "style.safetensors"), "scale": 1.5}],
        prompt="make it snow", images=[reference], seed=5,
    )  # fmt: skip
    assert_close(picture(output["images"][0]["url"]), expected)
    job = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=30).json()
    assert job["params"]["loras"] == [{"path": "style.safetensors", "scale": 1.5}]
    assert job["params"]["endpoint"] == f"{FAL}/edit/lora"


def test_openai_generations_take_loras(server, loras, engine):
    lora_dir, _, _ = loras
    body = {"prompt": "a castle", "size": "64x64", "seed": 6, "response_format": "b64_json",
            "loras": [{"path": "style.safetensors", "scale": 0.5}]}  # fmt: skip
    answer = httpx.post(f"{server.url}/v1/images/generations", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    image = picture("data:," + answer.json()["data"][0]["b64_json"])
    expected = engine_image(
        engine, [{"path": str(lora_dir / "style.safetensors"), "scale": 0.5}],
        prompt="a castle", width=64, height=64, seed=6,
    )  # fmt: skip
    assert_close(image, expected)


def bad_inputs() -> dict:
    closed = f"http://127.0.0.1:{free_port()}/gone.safetensors"
    return {
        "four LoRAs": ([{"path": "style.safetensors"}] * 4, "loras", "at most 3"),
        "scale 5": ([{"path": "style.safetensors", "scale": 5}], "loras[0].scale", "from 0 to 4"),
        "not safetensors": ([{"path": "notes.safetensors"}], "loras[0].path", "not a safetensors file"),
        "a pickle": ([{"path": "trap.safetensors"}], "loras[0].path", "never unpickles"),
        "9B-shaped on 4B": ([{"path": "wide.safetensors"}], "loras[0].path", "does not fit this model"),
        "private address": ([{"path": "http://10.1.2.3/a.safetensors"}], "loras[0].path", "internal address"),
        "escaping --lora-dir": ([{"path": "../outside/secret.safetensors"}], "loras[0].path",
                                "leaves --lora-dir"),
        "unreachable URL": ([{"path": closed}], "loras[0].path", "could not be reached"),
        "second entry": ([{"path": "style.safetensors"}, {"path": "nowhere.safetensors"}], "loras[1].path",
                         "neither an http(s) URL"),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(bad_inputs()))
def test_bad_loras_are_a_422_naming_the_field(server, loras, case):
    given, field, words = bad_inputs()[case]
    answer = fal(server, f"{FAL}/lora", {"prompt": "x", "image_size": SMALL, "loras": given})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"][0]
    expected_loc = [
        "body",
        *(int(p) if p.isdigit() else p for p in field.replace("]", "").replace(".", "[").split("[")),
    ]
    assert detail["loc"] == expected_loc, answer.text
    assert words in detail["msg"], answer.text
    openai = httpx.post(f"{server.url}/v1/images/generations",
                        json={"prompt": "x", "size": "64x64", "loras": given}, timeout=60)  # fmt: skip
    assert openai.status_code == 400 and openai.json()["error"]["param"] == field, openai.text
    assert fal(server, FAL, {"prompt": "still serving", "image_size": SMALL}).status_code == 200


def test_loras_on_a_plain_endpoint_are_refused(server):
    answer = fal(server, FAL, {"prompt": "x", "image_size": SMALL, "loras": [{"path": "style.safetensors"}]})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "loras"]
    assert f"{FAL}/lora" in answer.json()["detail"][0]["msg"]


def test_openai_multipart_edits_take_loras_as_json_text(server, loras, engine):
    lora_dir, _, _ = loras
    reference = random_image(80, 64, seed=7)
    buffer = io.BytesIO()
    reference.save(buffer, format="PNG")
    form = {"prompt": "autumn", "seed": "8", "response_format": "b64_json",
            "loras": '[{"path": "style.safetensors", "scale": 2}]'}  # fmt: skip
    answer = httpx.post(
        f"{server.url}/v1/images/edits",
        data=form,
        files={"image": ("ref.png", buffer.getvalue())},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    expected = engine_image(
        engine, [{"path": str(lora_dir / "style.safetensors"), "scale": 2}],
        prompt="autumn", images=[reference], seed=8,
    )  # fmt: skip
    assert_close(picture("data:," + answer.json()["data"][0]["b64_json"]), expected)


def test_a_lora_url_is_downloaded_once_and_kept_by_content_hash(server, loras):
    _, host, hosted = loras
    host.files["again.safetensors"] = hosted.read_bytes()
    body = {"prompt": "twice", "image_size": SMALL, "loras": [{"path": f"{host.url}/again.safetensors"}]}
    for seed in (1, 2):  # submitted twice, run twice: fetched once
        assert fal(server, f"{FAL}/lora", {**body, "seed": seed}).status_code == 200
    assert host.gets.count("again.safetensors") == 1
    digest = hashlib.sha256(hosted.read_bytes()).hexdigest()
    assert (server.data_dir / "loras" / f"{digest}.safetensors").read_bytes() == hosted.read_bytes()
