"""Hostile input and faults against a live server: each test reproduces a defect a hostile pass found (see
the issue "Hostile input and faults") and checks the fix: a 4xx naming the field, or a truthful job state."""

import concurrent.futures
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from kleinserve.models import Variant

from support.live_server import LiveServer, free_port
from support.zygote import run_kleinserve

KEY_A, KEY_B = "key-a-secret", "key-b-secret"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
FAL_A, FAL_B = {"Authorization": f"Key {KEY_A}"}, {"Authorization": f"Key {KEY_B}"}
ENDPOINT = "fal-ai/flux-2/klein/4b"
SMALL = {"width": 64, "height": 64}


def model_flag(checkpoints) -> list[str]:
    return ["--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}"]


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    with LiveServer(
        tmp_path_factory.mktemp("hostile"), *model_flag(checkpoints),
        "--api-key", KEY_A, "--api-key", KEY_B, "--allowed-host", "127.0.0.1", "--batch-wait-ms", "200",
        "--header-timeout-s", "1.5", "--body-timeout-s", "1.5",
    ) as live:  # fmt: skip
        yield live


def openai_post(server, body, headers=A, timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/images/generations", json=body, headers=headers, timeout=timeout)


def raw_post(server, path: str, text: str, headers=A) -> httpx.Response:
    headers = {**headers, "content-type": "application/json"}
    return httpx.post(f"{server.url}{path}", content=text.encode(), headers=headers, timeout=120)


def assert_openai_error(response: httpx.Response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    return error


def assert_fal_field_error(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", field], response.text


# 1. a lone surrogate passed validation, then failed its whole batch ---------------------------------------


def test_a_lone_surrogate_is_a_400_and_its_batch_mates_succeed(server):
    bad = '{"prompt": "\\ud800", "size": "64x64"}'
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(openai_post, server, {"prompt": f"good {i}", "size": "64x64"}) for i in range(5)]
        poisoned = pool.submit(raw_post, server, "/v1/images/generations", bad)
        fal_text = '{"prompt": "a\\udfff", "image_size": "square"}'
        fal_bad = pool.submit(raw_post, server, f"/{ENDPOINT}", fal_text, FAL_A)
        assert [future.result().status_code for future in goods] == [200] * 5
    error = assert_openai_error(poisoned.result(), 400, "prompt")
    assert "surrogate" in error["message"]
    assert_fal_field_error(fal_bad.result(), "prompt")
    negative = raw_post(server, "/v1/images/generations", '{"prompt": "x", "negative_prompt": "\\ud800"}')
    assert negative.status_code == 400


# 3. any key could read and cancel another key's jobs --------------------------------------------------


def test_jobs_belong_to_the_key_that_made_them(server):
    made = openai_post(server, {"prompt": "mine", "size": "64x64"}).json()
    job_id = made["job_id"]
    assert httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=A).json()["params"]["prompt"] == "mine"
    assert httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=B).status_code == 404
    assert job_id not in made["data"][0]["url"]  # a file URL names no job
    queued = httpx.post(f"{server.url}/queue/{ENDPOINT}", json={"prompt": "q", "image_size": SMALL},
                        headers=FAL_A).json()  # fmt: skip
    base = f"{server.url}/queue/fal-ai/flux-2/requests/{queued['request_id']}"
    for method, url in (("GET", base + "/status"), ("GET", base), ("PUT", base + "/cancel"),
                        ("GET", base + "/status/stream")):  # fmt: skip
        assert httpx.request(method, url, headers=FAL_B).status_code == 404, (method, url)
    assert httpx.get(base + "/status", headers=FAL_A).status_code == 200
    listed = {key: [job["id"] for job in httpx.get(f"{server.url}/v1/jobs", headers=h).json()["data"]]
              for key, h in (("a", A), ("b", B))}  # fmt: skip
    assert {job_id, queued["request_id"]} <= set(listed["a"]) and not {job_id, queued["request_id"]} & set(
        listed["b"]
    )
    assert (
        httpx.get(f"{server.url}/v1/jobs", params={"limit": "abc"}, headers=A).json()["error"]["param"]
        == "limit"
    )
    # an OpenAI job is not a fal request, even for its own key
    assert (
        httpx.put(f"{server.url}/queue/fal-ai/flux-2/requests/{job_id}/cancel", headers=FAL_A).status_code
        == 404
    )


# 5. an empty API key was accepted, and an empty Bearer then passed ----------------------------------------


@pytest.mark.parametrize("key", ["", "  ", " padded "])
def test_an_empty_or_padded_api_key_is_refused_at_start(checkpoints, tmp_path, key):
    run = run_kleinserve(["serve", *model_flag(checkpoints), "--api-key", key, "--port", str(free_port()),
                          "--data-dir", str(tmp_path)], timeout=60)  # fmt: skip
    assert run.returncode == 2 and "api-key" in run.output and "empty" in run.output, run.output


# 6 and 12. malformed input gave 5xx and reset the connection; wrong types were taken as unset ----------


def test_malformed_input_is_a_4xx_naming_the_field_and_the_connection_survives(server):
    deep = '{"prompt": "x", "size": ' + "[" * 1000 + "]" * 1000 + "}"
    openai_cases = [
        (deep, None),
        ('{"prompt": "x", "size": "\u00b2x\u00b2"}', "size"),
        ('{"prompt": "x", "response_format": []}', "response_format"),
        ('{"prompt": "x", "response_format": {}}', "response_format"),
        ('{"prompt": "x", "output_format": []}', "output_format"),
        ('{"prompt": "x", "output_format": {}}', "output_format"),
        ('{"prompt": "x", "quality": 5}', "quality"),
    ]
    fal_cases = [
        ('{"prompt": "x", "output_format": []}', "output_format"),
        ('{"prompt": "x", "output_format": {}}', "output_format"),
    ] + [
        (json.dumps({"prompt": "x", "image_urls": [url]}), "image_urls")
        for url in ("http://0177.0.0.1/a.png", "http://127.000.000.001/a.png", "http://[::1", "http://[::ffff:7f00:1]/a.png",
                    "http://[64:ff9b::7f00:1]/a.png", "http://2130706433/a.png")
    ]  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=60) as client:  # one keep-alive connection throughout
        for text, param in openai_cases:
            response = client.post("/v1/images/generations", content=text, headers=A)
            assert 400 <= response.status_code < 500, (text[:80], response.text)
            assert response.json()["error"]["param"] == param, (text[:80], response.text)
        for text, field in fal_cases:
            path = f"/{ENDPOINT}/edit" if "image_urls" in text else f"/{ENDPOINT}"
            assert_fal_field_error(client.post(path, content=text, headers=FAL_A), field)
        assert (
            client.post(
                "/v1/images/generations", json={"prompt": "ok", "size": "64x64"}, headers=A
            ).status_code
            == 200
        )


# 8. a client that hung up on a sync request still had its job run to the end -----------------------------


def metric(server, name: str, label: str = "") -> float:
    """The value of a Prometheus sample, e.g. metric(server, "kleinserve_jobs_total", 'status="failed"')."""
    text = httpx.get(server.url + "/metrics").text
    line = next((line for line in text.splitlines() if line.startswith(name + "{") and label in line), None)
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


def jobs_counted(server, status: str) -> float:
    return metric(server, "kleinserve_jobs_total", f'status="{status}"')


def test_a_client_that_hangs_up_on_a_sync_request_cancels_its_job(server):
    cancelled_before = jobs_counted(server, "cancelled")
    slow = {"prompt": "abandoned", "size": "2048x2048", "num_inference_steps": 8}
    with pytest.raises(httpx.ReadTimeout):
        openai_post(server, slow, timeout=1.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/{ENDPOINT}", json={**slow, "image_size": {"width": 2048, "height": 2048}},
                   headers=FAL_A, timeout=1.0)  # fmt: skip
    deadline = time.monotonic() + 30
    while jobs_counted(server, "cancelled") < cancelled_before + 2:
        assert time.monotonic() < deadline, "the abandoned jobs were not cancelled"
        time.sleep(0.1)


# 10. slow clients held connections open with partial headers or bodies ----------------------------------


def test_partial_headers_and_stalled_bodies_are_cut_off(server):
    with socket.create_connection(("127.0.0.1", server.port)) as head:
        head.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        head.settimeout(10)
        start = time.monotonic()
        assert head.recv(1024) == b""  # closed by the server
        assert time.monotonic() - start < 8
    with socket.create_connection(("127.0.0.1", server.port)) as body:
        head_lines = [
            "POST /v1/images/generations HTTP/1.1",
            "Host: 127.0.0.1",
            f"Authorization: Bearer {KEY_A}",
            "Content-Type: application/json",
            "Content-Length: 100",
        ]
        body.sendall(("\r\n".join(head_lines) + '\r\n\r\n{"prompt"').encode())  # 9 of 100 bytes
        body.settimeout(10)
        answer = b""
        while b"stalled" not in answer and (chunk := body.recv(4096)):
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 408") and "stalled" in answer


# 14. the Host header was copied into returned URLs ---------------------------------------------------


def test_an_unknown_host_header_is_refused(server):
    response = openai_post(server, {"prompt": "x", "size": "64x64"}, headers={**A, "Host": "evil.example"})
    assert response.status_code == 400 and "evil.example" in response.json()["error"]["message"]
    good = openai_post(server, {"prompt": "x", "size": "64x64"}).json()
    assert good["data"][0]["url"].startswith(server.url)


# 11. X-Forwarded-For from 127.0.0.1 reset the per-address rate limit -------------------------------------


def test_forwarding_headers_do_not_reset_the_rate_limit(checkpoints, tmp_path):
    with LiveServer(
        tmp_path, *model_flag(checkpoints), "--rate-limit-per-minute", "2", "--no-warmup"
    ) as live:
        statuses = [
            httpx.post(f"{live.url}/v1/images/generations", json={"prompt": ""},
                       headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
            for i in range(4)
        ]  # fmt: skip
    assert statuses == [400, 400, 429, 429]


# 7. SIGTERM with work in flight: clients got plain-text 500s -----------------------------------------------


def test_sigterm_answers_every_waiting_client_and_leaves_truthful_jobs(checkpoints, tmp_path):
    flags = [*model_flag(checkpoints), "--shutdown-grace-s", "1", "--batch-wait-ms", "0", "--no-warmup"]
    server = LiveServer(tmp_path, *flags).start()
    answers = {}

    def call(name, body):
        answers[name] = openai_post(server, body, headers={})

    running = threading.Thread(target=call, args=("running", {"prompt": "long", "size": "2048x2048",
                                                               "num_inference_steps": 8}))  # fmt: skip
    running.start()
    time.sleep(1.0)
    queued = httpx.post(
        f"{server.url}/queue/{ENDPOINT}", json={"prompt": "waiting", "image_size": SMALL}
    ).json()
    server.process.send_signal(signal.SIGTERM)
    running.join(timeout=60)
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert answers["running"].status_code == 503, answers["running"].text
    assert "shutting down" in answers["running"].json()["error"]["message"]
    server.start()
    try:  # the queue job nobody waited on was kept, and runs after the restart (the durable queue)
        job_url = f"{server.url}/v1/jobs/{queued['request_id']}"
        deadline = time.monotonic() + 120
        while (job := httpx.get(job_url).json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert job["status"] == "succeeded", job
    finally:
        server.stop()
    assert "Traceback" not in server.log()


# 4. a full disk: 500s, a job left running, partial files, work run without a record -------------------------


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:  # unbuffered: nothing left over for close() to write
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_a_full_disk_gives_507_runs_nothing_and_recovers(checkpoints, small_disk):
    with LiveServer(small_disk / "data", *model_flag(checkpoints), "--no-warmup") as server:
        assert openai_post(server, {"prompt": "before", "size": "64x64"}, headers={}).status_code == 200
        batches_before = metric(server, "kleinserve_batch_images_count")
        filler = fill(small_disk)
        answers = [
            openai_post(server, {"prompt": f"full {i}", "size": "64x64"}, headers={}) for i in range(4)
        ]
        fal = httpx.post(f"{server.url}/{ENDPOINT}", json={"prompt": "full", "image_size": SMALL},
                         timeout=120)
        for answer in answers:
            assert answer.status_code == 507 and "disk is full" in answer.json()["error"]["message"], (
                answer.text
            )
            assert answer.headers["retry-after"]
        assert fal.status_code == 507 and fal.json()["error_type"] == "storage_full"
        assert not list(small_disk.glob("**/.partial-*"))
        assert metric(server, "kleinserve_batch_images_count") == batches_before  # nothing ran unrecorded
        assert jobs_counted(server, "running") == 0
        filler.unlink()  # space returns: the server recovers by itself
        assert openai_post(server, {"prompt": "after", "size": "64x64"}, headers={}).status_code == 200


# 2. small uploads took huge memory: four black 8000x8000 PNGs per request --------------------------------

MEMORY_BOUND_MIB = 1536  # above the idle server's peak (measured: ~800); the hostile pass saw 7,600 for this


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def test_huge_dimension_uploads_stay_within_a_stated_memory_bound(checkpoints, tmp_path):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8000, 8000)).save(buffer, "PNG", compress_level=9)
    huge = buffer.getvalue()  # about 190 KB that decode to 64 megapixels
    with LiveServer(tmp_path, *model_flag(checkpoints), "--batch-wait-ms", "0") as server:
        idle_now, idle_peak = memory_mib(server.process.pid)

        def edit(i: int) -> httpx.Response:
            files = [("image[]", (f"{i}-{j}.png", huge, "image/png")) for j in range(4)]
            data = {"prompt": "huge", "size": "64x64"}
            return httpx.post(f"{server.url}/v1/images/edits", files=files, data=data, timeout=300)

        # 8 decodes of 64 MP queue for DECODE_SLOTS = 2; decoded at once they would take ~3 GB
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(edit, range(2)))
        now, peak = memory_mib(server.process.pid)
    assert [answer.status_code for answer in answers] == [200] * 2, answers[0].text
    assert peak - idle_peak < MEMORY_BOUND_MIB, (idle_peak, peak)
    assert now - idle_now < 512, (idle_now, now)  # and it is handed back
    print(f"idle peak {idle_peak:.0f} MiB, peak {peak:.0f} MiB, after {now:.0f} MiB (idle {idle_now:.0f})")
