"""Durability and limits of a real server: results survive restarts, interrupted jobs fail clearly, old
jobs expire, a full queue answers 503, API keys and the rate limit hold."""

import contextlib
import shutil
import threading
import time

import httpx
import openai
import pytest

from kleinserve.models import Variant
from kleinserve.settings import DEFAULT_SAFETY_MODEL

from support.live_server import LiveServer, self_signed_certificate
from support.zygote import run_kleinserve


def model_flag(checkpoints) -> list[str]:
    return ["--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}"]


def generate(server: LiveServer, **fields) -> httpx.Response:
    body = {"prompt": "a fox", "size": "64x64", **fields}
    return httpx.post(server.url + "/v1/images/generations", json=body, timeout=120)


def test_results_survive_a_restart(checkpoints, tmp_path):
    server = LiveServer(tmp_path, *model_flag(checkpoints), "--no-warmup").start()
    try:
        body = generate(server, seed=9, n=2).json()
        urls = [item["url"] for item in body["data"]]
        before = [httpx.get(url).content for url in urls]
    finally:
        server.stop()
    with httpx.Client() as client, pytest.raises(httpx.ConnectError):
        client.get(urls[0])
    server.start()
    try:
        after = [httpx.get(url) for url in urls]
        assert [r.status_code for r in after] == [200, 200]
        assert [r.content for r in after] == before
        job = httpx.get(f"{server.url}/v1/jobs/{body['job_id']}").json()
        assert job["status"] == "succeeded" and job["result"]["seed"] == 9
    finally:
        server.stop()


def test_a_job_in_flight_when_the_server_dies_is_failed_clearly(checkpoints, tmp_path):
    server = LiveServer(tmp_path, *model_flag(checkpoints), "--no-warmup").start()
    thread = threading.Thread(target=lambda: _ignore_errors(generate, server, size="1024x1024", n=2))
    thread.start()
    job_id = _wait_for_running_job(server)
    server.stop(hard=True)  # SIGKILL: no chance to clean up
    thread.join()
    server.start()
    try:
        job = httpx.get(f"{server.url}/v1/jobs/{job_id}").json()
        assert job["status"] == "failed"
        assert "server stopped before this job finished" in job["error"]["message"]
        assert "submit it again" in job["logs"][-1]["message"]
        assert generate(server).status_code == 200  # and it serves again
    finally:
        server.stop()


def _ignore_errors(function, *args, **kwargs):
    with contextlib.suppress(httpx.HTTPError):  # the server is killed under this request
        function(*args, **kwargs)


def _wait_for_running_job(server, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            running = httpx.get(f"{server.url}/v1/jobs", params={"status": "running"}).json()["data"]
            if running:
                return running[0]["id"]
        time.sleep(0.05)
    raise AssertionError("no job started running")


def test_old_jobs_and_files_expire(checkpoints, tmp_path):
    retention_hours = 2 / 3600  # two seconds
    flags = [*model_flag(checkpoints), "--retention-hours", str(retention_hours), "--no-warmup"]
    with LiveServer(tmp_path, *flags) as server:
        body = generate(server).json()
        assert httpx.get(body["data"][0]["url"]).status_code == 200
        deadline = time.monotonic() + 20
        while httpx.get(body["data"][0]["url"]).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.25)
        gone = httpx.get(body["data"][0]["url"])
        assert gone.status_code == 404 and "expire" in gone.json()["error"]["message"]
        assert httpx.get(f"{server.url}/v1/jobs/{body['job_id']}").status_code == 404
        assert not list((tmp_path / "files").glob("*/*"))  # its folder went with it


def test_a_full_queue_answers_503_with_retry_after(checkpoints, tmp_path):
    flags = [*model_flag(checkpoints), "--max-queue-depth", "1", "--batch-wait-ms", "0", "--no-warmup"]
    with LiveServer(tmp_path, *flags) as server:
        responses = {}

        def call(name, **fields):
            responses[name] = generate(server, **fields)

        busy = threading.Thread(target=call, args=("busy",), kwargs={"size": "1024x1024", "n": 2})
        busy.start()
        _wait_for_running_job(server)
        queued = threading.Thread(target=call, args=("queued",), kwargs={"size": "1024x1024"})
        queued.start()
        time.sleep(0.5)
        refused = generate(server)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full"
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            client.images.generate(prompt="a fox", size="64x64")
        busy.join()
        queued.join()
        assert responses["busy"].status_code == 200 and responses["queued"].status_code == 200


def test_api_keys(checkpoints, tmp_path):
    flags = [*model_flag(checkpoints), "--api-key", "k1", "--api-key", "k2", "--no-warmup"]
    with LiveServer(tmp_path, *flags) as server:
        for key in ("k1", "k2"):
            client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
            assert client.images.generate(prompt="a fox", size="64x64").data[0].url
        wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="API key"):
            wrong.images.generate(prompt="a fox", size="64x64")
        missing = httpx.post(server.url + "/v1/images/generations", json={"prompt": "x"})
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
        fal_style = httpx.get(server.url + "/v1/models", headers={"Authorization": "Key k2"})
        assert fal_style.status_code == 200
        assert httpx.get(server.url + "/health").status_code == 200  # probes stay open
        assert httpx.get(server.url + "/metrics").status_code == 200
        assert "API keys required" in server.log()


def test_open_server_says_so_and_is_ready_only_once_loaded(checkpoints, tmp_path):
    with LiveServer(tmp_path, *model_flag(checkpoints)) as server:
        log = server.log()
        assert "no API keys configured: the API is OPEN" in log
        loaded = log.index("warmed up flux.2-klein-4b")
        assert '"GET /ready HTTP/1.1" 503' in log[:loaded]  # polled while loading: not ready
        assert '"GET /ready HTTP/1.1" 200' not in log[:loaded]


def test_rate_limit_per_key(checkpoints, tmp_path):
    flags = [*model_flag(checkpoints), "--api-key", "a", "--api-key", "b", "--rate-limit-per-minute", "2"]
    flags.append("--no-warmup")
    with LiveServer(tmp_path, *flags) as server:
        a = openai.OpenAI(base_url=server.url + "/v1", api_key="a", max_retries=0)
        b = openai.OpenAI(base_url=server.url + "/v1", api_key="b", max_retries=0)
        a.images.generate(prompt="1", size="64x64")
        a.images.generate(prompt="2", size="64x64")
        with pytest.raises(openai.RateLimitError) as caught:
            a.images.generate(prompt="3", size="64x64")
        assert 1 <= int(caught.value.response.headers["retry-after"]) <= 30
        assert caught.value.body["type"] == "rate_limit_error"
        assert b.images.generate(prompt="other key", size="64x64").data  # keys are limited separately
        assert httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer a"}).status_code == 200


def test_demo_flag_serves_a_labelled_random_weight_model(tmp_path):
    demo_classifier = {"KLEINSERVE_SAFETY_MODEL": DEFAULT_SAFETY_MODEL}  # the demo builds its own tiny one
    flags = ("--demo", "--public-base-url", "https://img.example.com/klein/", "--no-warmup")
    with LiveServer(tmp_path, *flags, env=demo_classifier) as server:
        model = httpx.get(server.url + "/v1/models").json()["data"][0]
        assert model["id"] == "flux.2-klein-4b" and "random-weight" in model["warning"]
        response = generate(server)
        assert response.status_code == 200
        assert "random-weight" in response.headers["x-kleinserve-warning"]
        url = response.json()["data"][0]["url"]
        assert url.startswith("https://img.example.com/klein/files/") and url.endswith("/0.png")
        assert httpx.get(server.url + url.removeprefix("https://img.example.com/klein")).status_code == 200
        assert "DEMO: tiny random-weight test model" in server.log()
        assert (tmp_path / "demo-checkpoint" / "model_index.json").is_file()
    assert (tmp_path / "demo-safety-classifier" / "config.json").is_file()


def test_serve_refuses_bad_configuration(tmp_path):
    def serve(*args):
        return run_kleinserve(["serve", *args])

    unknown = serve("--model", "flux.2-klein-77b", "--data-dir", str(tmp_path))
    assert unknown.returncode != 0 and "unknown model 'flux.2-klein-77b'" in unknown.output
    nothing = serve("--data-dir", str(tmp_path))
    assert nothing.returncode != 0 and "--model" in nothing.output and "--demo" in nothing.output
    half_tls = serve("--demo", "--ssl-certfile", "c.pem", "--data-dir", str(tmp_path))
    assert half_tls.returncode == 2 and "--ssl-keyfile" in half_tls.output
    negative = serve("--demo", "--max-batch-images", "0", "--data-dir", str(tmp_path))
    assert negative.returncode == 2 and "--max-batch-images" in negative.output
    not_a_checkpoint = serve("--model", f"flux.2-klein-4b={tmp_path}", "--data-dir", str(tmp_path))
    assert not_a_checkpoint.returncode == 1 and "model_index.json is missing" in not_a_checkpoint.output
    no_weights = serve("--model", "flux.2-klein-9b", "--no-download", "--data-dir", str(tmp_path))
    assert no_weights.returncode == 1 and "hf download black-forest-labs/FLUX.2-klein-9B" in no_weights.output


def test_a_second_server_on_the_same_data_dir_is_refused(checkpoints, tmp_path):
    with LiveServer(tmp_path, *model_flag(checkpoints), "--no-warmup"):
        second = run_kleinserve(["serve", *model_flag(checkpoints), "--data-dir", str(tmp_path)])
    assert second.returncode == 1, second.output
    assert "another kleinserve server is using" in second.output and "--data-dir" in second.output


def test_wrong_variant_checkpoint_is_refused_at_start(checkpoints, tmp_path):
    model = f"flux.2-klein-9b-kv={checkpoints[Variant.DISTILLED]}"
    wrong = run_kleinserve(["serve", "--data-dir", str(tmp_path), "--model", model])
    assert (
        wrong.returncode == 1 and "holds a distilled checkpoint, but flux.2-klein-9b-kv is kv" in wrong.output
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls(checkpoints, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    flags = [*model_flag(checkpoints), "--ssl-certfile", cert, "--ssl-keyfile", key, "--no-warmup"]
    with LiveServer(tmp_path / "data", *flags) as server:
        assert server.url.startswith("https://")
        trusted = server.ssl_context()
        client = openai.OpenAI(
            base_url=server.url + "/v1", api_key="x", http_client=openai.DefaultHttpxClient(verify=trusted)
        )
        with client:  # closed before the server stops, which waits for open connections
            result = client.images.generate(prompt="over TLS", size="64x64")
        assert result.data[0].url.startswith(server.url + "/files/")
        assert httpx.get(result.data[0].url, verify=trusted).headers["content-type"] == "image/png"
        with pytest.raises(httpx.ConnectError):  # not signed by a CA the client trusts
            httpx.get(server.url + "/health")


def test_a_model_that_fails_to_load_is_reported_not_ready(checkpoints, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints[Variant.DISTILLED], broken)
    for weights in (broken / "transformer").glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    server = LiveServer(tmp_path / "data", "--model", f"flux.2-klein-4b={broken}")
    server.start(timeout=0)  # it never becomes ready: do not wait for that
    try:
        state = None
        deadline = time.monotonic() + 60
        while state != "failed" and time.monotonic() < deadline:
            time.sleep(0.2)
            with contextlib.suppress(httpx.TransportError):
                state = httpx.get(server.url + "/health").json()["models"]["flux.2-klein-4b"]["state"]
        assert state == "failed" and "could not load flux.2-klein-4b" in server.log()
        ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 503 and ready.headers["retry-after"]
        refused = generate(server)
        assert refused.status_code == 503 and "failed to load" in refused.json()["error"]["message"]
    finally:
        server.stop()
