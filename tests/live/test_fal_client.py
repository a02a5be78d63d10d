"""The fal dialect through the unmodified fal-client package, over TLS, against a real server."""

import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from support.images import data_uri, random_image

ENDPOINT = "fal-ai/flux-2/klein/4b"
SMALL = {"width": 64, "height": 64}


def fetch(server, url: str) -> Image.Image:
    if url.startswith("data:"):
        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    response = httpx.get(url, verify=server.ssl_context())
    response.raise_for_status()
    return Image.open(io.BytesIO(response.content))


def stored_keys(server, request_id: str) -> list:
    """The storage keys a job's record holds (None for an image returned inline)."""
    record = httpx.get(f"{server.url}/v1/jobs/{request_id}", verify=server.ssl_context()).json()
    return [image["key"] for image in (record["result"] or {}).get("images", [])]


def test_run_returns_fal_shaped_output_with_images_of_the_requested_size(fal, fal_server):
    size = {"width": 128, "height": 80}
    arguments = {
        "prompt": "a lighthouse",
        "image_size": size,
        "seed": 7,
        "num_images": 2,
        "output_format": "jpeg",
    }
    result = fal.run(ENDPOINT, arguments=arguments)
    assert result["seed"] == 7 and result["prompt"] == "a lighthouse"
    assert result["has_nsfw_concepts"] == [False, False]
    assert result["timings"]["inference"] > 0
    for image in result["images"]:
        assert image["content_type"] == "image/jpeg" and (image["width"], image["height"]) == (128, 80)
        assert image["url"].startswith(f"https://127.0.0.1:{fal_server.port}/files/")
        picture = fetch(fal_server, image["url"])
        assert picture.format == "JPEG" and picture.size == (128, 80)
        assert image["file_size"] == len(httpx.get(image["url"], verify=fal_server.ssl_context()).content)
    again = fal.run(ENDPOINT, arguments={"prompt": "a lighthouse", "image_size": "square", "seed": 7})
    assert fetch(fal_server, again["images"][0]["url"]).size == (512, 512)


def test_run_is_deterministic_per_seed(fal, fal_server):
    arguments = {"prompt": "same", "image_size": SMALL, "seed": 11}
    first, second = (fal.run(ENDPOINT, arguments=arguments) for _ in range(2))
    pixels = [np.asarray(fetch(fal_server, r["images"][0]["url"])) for r in (first, second)]
    assert np.array_equal(*pixels)


def test_subscribe_reports_queue_updates_and_step_logs(fal, fal_server):
    updates = []
    result = fal.subscribe(ENDPOINT, arguments={"prompt": "subscribed", "image_size": "square"},
                           with_logs=True, on_queue_update=updates.append)  # fmt: skip
    assert fetch(fal_server, result["images"][0]["url"]).size == (512, 512)
    assert isinstance(updates[-1], fal.Completed) and updates[-1].metrics["inference_time"] > 0
    messages = [log["message"] for log in updates[-1].logs]
    assert [m for m in messages if m.startswith("step")] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    assert {"message", "level", "source", "timestamp"} <= set(updates[-1].logs[0])
    assert any(isinstance(update, fal.InProgress) for update in updates)


def succeeded_4b_jobs(server) -> int:
    stats = httpx.get(server.url + "/v1/stats", verify=server.ssl_context()).json()
    return stats["models"].get("flux.2-klein-4b", {}).get("succeeded", 0)


def test_submit_then_status_and_result_also_rebuilt_from_the_app_id(fal, fal_server):
    counted_before = succeeded_4b_jobs(fal_server)
    handle = fal.submit(ENDPOINT, arguments={"prompt": "queued", "image_size": SMALL, "seed": 5})
    assert handle.status_url.endswith(f"/queue/fal-ai/flux-2/requests/{handle.request_id}/status")
    events = list(handle.iter_events(with_logs=True, interval=0.05))
    assert isinstance(events[-1], fal.Completed) and events[-1].error is None
    result = handle.get()
    assert result["seed"] == 5
    # status(app, id) and result(app, id) build the URLs themselves, from the endpoint id
    status = fal.status(ENDPOINT + "/edit", handle.request_id, with_logs=True)
    assert isinstance(status, fal.Completed) and status.logs[-1]["message"] == "succeeded"
    assert fal.result(ENDPOINT, handle.request_id) == result
    assert succeeded_4b_jobs(fal_server) == counted_before + 1  # queue jobs count in /v1/stats too


def test_a_queued_job_reports_its_position_and_a_cancelled_one_never_runs(fal, fal_server):
    busy = fal.submit(ENDPOINT, arguments={"prompt": "busy", "image_size": {"width": 1024, "height": 1024},
                                           "num_inference_steps": 8})  # fmt: skip
    doomed = fal.submit(ENDPOINT, arguments={"prompt": "doomed", "image_size": {"width": 512, "height": 512}})
    status = doomed.status()
    assert isinstance(status, fal.Queued) and status.position >= 0
    doomed.cancel()
    final = doomed.status(with_logs=True)
    assert isinstance(final, fal.Completed) and final.error_type == "cancelled"
    assert not any(log["message"].startswith(("started", "step")) for log in final.logs)
    with pytest.raises(fal.FalClientHTTPError) as cancelled:
        doomed.get()
    assert cancelled.value.status_code == 400 and "cancelled" in str(cancelled.value)
    assert busy.get()["images"]  # the other job is unaffected
    assert stored_keys(fal_server, doomed.request_id) == []
    with pytest.raises(fal.FalClientHTTPError) as late:  # finished jobs answer ALREADY_COMPLETED
        busy.cancel()
    assert (
        late.value.status_code == 400
        and json.loads(late.value.response.text)["status"] == "ALREADY_COMPLETED"
    )


def test_a_running_job_stops_at_the_next_step_and_frees_the_engine(fal, fal_server):
    long = {"prompt": "long", "image_size": {"width": 2048, "height": 2048}, "num_inference_steps": 8}
    running = fal.submit(ENDPOINT, arguments=long)
    deadline = time.monotonic() + 60
    while not _logged(running.status(with_logs=True), "step 1/8"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    fal.cancel(ENDPOINT, running.request_id)
    steps_at_cancel = _steps(running.status(with_logs=True))
    after = fal.run(ENDPOINT, arguments={"prompt": "next", "image_size": SMALL})
    assert after["images"]
    final = running.status(with_logs=True)
    assert isinstance(final, fal.Completed) and final.error_type == "cancelled"
    assert not _logged(final, "step 8/8")
    # it stopped at the next step boundary (at most the step in flight, and one log write in transit)
    assert len(_steps(final)) <= len(steps_at_cancel) + 2 and len(_steps(final)) < 8, _steps(final)
    verify = fal_server.ssl_context()
    record = httpx.get(f"{fal_server.url}/v1/jobs/{running.request_id}", verify=verify).json()
    assert record["status"] == "cancelled" and record["result"] is None  # no image written


def _steps(status) -> list[str]:
    messages = [log["message"] for log in (getattr(status, "logs", None) or [])]
    return [message for message in messages if message.startswith("step")]


def _logged(status, message: str) -> bool:
    return any(log["message"] == message for log in (getattr(status, "logs", None) or []))


def test_edit_with_one_data_uri_takes_its_size(fal, fal_server):
    reference = random_image(144, 96, seed=3)
    result = fal.run(
        ENDPOINT + "/edit", arguments={"prompt": "make it blue", "image_urls": [data_uri(reference)]}
    )
    image = result["images"][0]
    assert (image["width"], image["height"]) == (144, 96)
    assert fetch(fal_server, image["url"]).size == (144, 96)


def test_edit_takes_one_image_url_as_ai_sdk_fal_sends_it(fal, fal_server):
    reference = random_image(112, 80, seed=4)
    result = fal.run(
        ENDPOINT + "/edit", arguments={"prompt": "make it red", "image_url": data_uri(reference)}
    )
    assert fetch(fal_server, result["images"][0]["url"]).size == (112, 80)


def test_request_id_headers_on_sync_and_queue_results(fal_server):
    verify, headers = fal_server.ssl_context(), {"Authorization": "Key x"}
    sync = httpx.post(
        f"{fal_server.url}/{ENDPOINT}", json={"prompt": "h", "image_size": SMALL}, verify=verify,
        timeout=120,
    )
    request_id, url = sync.headers["x-fal-request-id"], sync.json()["images"][0]["url"]
    assert request_id and url.startswith(f"{fal_server.url}/files/")
    assert request_id not in url  # a file URL reveals no job id
    queued = httpx.post(f"{fal_server.url}/queue/{ENDPOINT}", json={"prompt": "h", "image_size": SMALL},
                        verify=verify, headers=headers).json()  # fmt: skip
    deadline = time.monotonic() + 60
    while httpx.get(queued["status_url"], verify=verify).json()["status"] != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    result = httpx.get(queued["response_url"], verify=verify)
    assert result.headers["x-fal-request-id"] == queued["request_id"]


def test_edit_with_four_urls_from_a_web_server(fal, fal_server, image_host):
    urls = [f"{image_host.url}/{name}" for name in image_host.SIZES]
    arguments = {"prompt": "combine", "image_urls": urls, "image_size": {"width": 96, "height": 64}}
    result = fal.subscribe(ENDPOINT + "/edit", arguments=arguments)
    assert fetch(fal_server, result["images"][0]["url"]).size == (96, 64)
    default_size = fal.run(ENDPOINT + "/edit", arguments={"prompt": "keep size", "image_urls": urls[:1]})
    assert (default_size["images"][0]["width"], default_size["images"][0]["height"]) == (160, 128)


def test_sync_mode_returns_data_uris_and_stores_nothing(fal, fal_server):
    result = fal.run(ENDPOINT, arguments={"prompt": "inline", "image_size": SMALL, "sync_mode": True,
                                          "output_format": "webp"})  # fmt: skip
    image = result["images"][0]
    assert image["url"].startswith("data:image/webp;base64,") and fetch(fal_server, image["url"]).size == (
        64,
        64,
    )
    queued = fal.submit(ENDPOINT, arguments={"prompt": "inline", "image_size": SMALL, "sync_mode": True})
    assert queued.get()["images"][0]["url"].startswith("data:image/png;base64,")
    for request_id in (queued.request_id, _job_id_of(fal_server, "inline")):
        assert stored_keys(fal_server, request_id) == [None]
    assert not list((fal_server.data_dir / "files").glob("*/*.webp"))  # no webp was ever stored


def _job_id_of(server, prompt: str) -> str:
    jobs = httpx.get(f"{server.url}/v1/jobs", verify=server.ssl_context()).json()["data"]
    return next(job["id"] for job in jobs if job["params"]["prompt"] == prompt)


def test_base_endpoint_takes_guidance_and_a_negative_prompt(fal, fal_server):
    result = fal.run("fal-ai/flux-2/klein/4b/base", arguments={
        "prompt": "base", "image_size": SMALL, "num_inference_steps": 4, "guidance_scale": 2.5,
        "negative_prompt": "blurry"})  # fmt: skip
    assert fetch(fal_server, result["images"][0]["url"]).size == (64, 64)
    with pytest.raises(fal.FalClientHTTPError) as distilled:
        fal.run(ENDPOINT, arguments={"prompt": "x", "image_size": SMALL, "guidance_scale": 2.5})
    assert distilled.value.status_code == 422 and "guidance_scale" in str(distilled.value)


def job_record(server, request_id: str) -> dict:
    return httpx.get(f"{server.url}/v1/jobs/{request_id}", verify=server.ssl_context()).json()


def test_base_endpoint_takes_fals_base_defaults_and_accepts_acceleration(fal, fal_server):
    base, arguments = "fal-ai/flux-2/klein/4b/base", {"prompt": "fal base", "image_size": SMALL, "seed": 5}
    handle = fal.submit(base, arguments=arguments)
    plain = handle.get()
    record = job_record(fal_server, handle.request_id)
    assert (record["params"]["steps"], record["params"]["guidance"]) == (28, 5.0)  # fal's, not 50 and 4.0
    logs = fal.status(base, handle.request_id, with_logs=True).logs
    assert [log["message"] for log in logs if log["message"].startswith("step")][-1] == "step 28/28"
    accelerated = fal.run(base, arguments={**arguments, "acceleration": "high"})
    pixels = [np.asarray(fetch(fal_server, r["images"][0]["url"])) for r in (plain, accelerated)]
    assert np.array_equal(*pixels)  # accepted for compatibility; the computation is the same
    for field, value, words in [("acceleration", "max", "none, regular, high"),
                                ("num_inference_steps", 51, "from 4 to 50")]:  # fmt: skip
        with pytest.raises(fal.FalClientHTTPError) as refused:
            fal.run(base, arguments={**arguments, field: value})
        (detail,) = refused.value.response.json()["detail"]
        assert refused.value.status_code == 422 and detail["loc"] == ["body", field]
        assert words in detail["msg"]


def test_status_stream_sends_server_sent_events_until_completed(fal, fal_server):
    handle = fal.submit(ENDPOINT, arguments={"prompt": "streamed", "image_size": "square"})
    events = []
    with httpx.stream("GET", handle.status_url + "/stream?logs=1", verify=fal_server.ssl_context(),
                      headers={"Authorization": "Key x"}, timeout=60) as response:  # fmt: skip
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    statuses = [event["status"] for event in events]
    assert statuses[-1] == "COMPLETED" and "IN_PROGRESS" in statuses
    assert any(log["message"] == "step 4/4" for log in events[-1]["logs"])
    assert handle.get()["images"]


def preview_sizes(event) -> list[tuple[int, int]]:
    sizes = []
    for image in event["images"]:
        assert image["url"].startswith("data:image/jpeg;base64,") and image["content_type"] == "image/jpeg"
        picture = fetch(None, image["url"])
        assert picture.size == (image["width"], image["height"])
        sizes.append(picture.size)
    return sizes


def test_stream_sends_a_preview_per_step_then_the_output(fal, fal_server):
    arguments = {"prompt": "streamed", "image_size": {"width": 128, "height": 96}, "num_images": 2, "seed": 3}
    events = list(fal.stream(ENDPOINT, arguments=arguments))
    *progress, output = events
    assert [e["step"] for e in progress] == [1, 2, 3, 4] and progress[-1]["progress"] == 1.0
    assert all(e["status"] == "IN_PROGRESS" and e["num_inference_steps"] == 4 for e in progress)
    assert all(preview_sizes(e) == [(16, 12)] * 2 for e in progress)  # 1/8 of the image, per image
    assert progress[0]["request_id"] == progress[-1]["request_id"] and output["seed"] == 3
    assert [fetch(fal_server, image["url"]).size for image in output["images"]] == [(128, 96)] * 2
    again = fal.run(ENDPOINT, arguments=arguments)  # streaming changes no pixel
    for streamed, ran in zip(output["images"], again["images"], strict=True):
        assert np.array_equal(
            np.asarray(fetch(fal_server, streamed["url"])), np.asarray(fetch(fal_server, ran["url"]))
        )


def test_stream_async_and_an_edit(fal, fal_server):
    import asyncio

    async def collect():
        arguments = {
            "prompt": "edit",
            "image_urls": [data_uri(random_image(96, 64, seed=1))],
            "sync_mode": True,
        }
        return [event async for event in fal.stream_async(ENDPOINT + "/edit", arguments=arguments)]

    *progress, output = asyncio.run(collect())
    assert len(progress) == 4 and preview_sizes(progress[0]) == [(12, 8)]
    assert output["images"][0]["url"].startswith("data:image/png") and output["images"][0]["width"] == 96


def test_stream_refuses_bad_input_before_streaming(fal_server):
    response = httpx.post(f"{fal_server.url}/{ENDPOINT}/stream", json={"prompt": "x", "num_images": 9},
                          verify=fal_server.ssl_context())  # fmt: skip
    assert response.status_code == 422 and response.headers["content-type"] == "application/json"
    assert response.json()["detail"][0]["loc"] == ["body", "num_images"]


def test_a_client_that_hangs_up_on_a_stream_cancels_its_job(fal_server):
    verify = fal_server.ssl_context()
    arguments = {"prompt": "abandoned", "image_size": "square_hd", "num_inference_steps": 8}
    with httpx.stream("POST", f"{fal_server.url}/{ENDPOINT}/stream", json=arguments, verify=verify,
                      timeout=60) as response:  # fmt: skip
        first = json.loads(next(line for line in response.iter_lines() if line.startswith("data: "))[6:])
    assert first["step"] == 1
    deadline = time.monotonic() + 30
    while (job := httpx.get(f"{fal_server.url}/v1/jobs/{first['request_id']}", verify=verify).json())[
        "status"
    ] not in ("cancelled", "failed", "succeeded"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["status"] == "cancelled"
    assert "step 8/8" not in [entry["message"] for entry in job["logs"]]


def test_the_fal_proxy_routes_only_fal_targets(fal_server):
    verify, proxy = fal_server.ssl_context(), f"{fal_server.url}/fal/proxy"

    def via_proxy(method: str, target: str, **kwargs) -> httpx.Response:
        headers = {"x-fal-target-url": target, "Authorization": "Key x"}
        return httpx.request(method, proxy, headers=headers, verify=verify, timeout=60, **kwargs)

    ran = via_proxy("POST", f"https://fal.run/{ENDPOINT}", json={"prompt": "p", "image_size": SMALL})
    assert ran.status_code == 200 and ran.headers["x-fal-request-id"]
    submitted = via_proxy(
        "POST", f"https://queue.fal.run/{ENDPOINT}", json={"prompt": "q", "image_size": SMALL}
    )
    request_id = submitted.json()["request_id"]
    status = via_proxy("GET", f"https://queue.fal.run/fal-ai/flux-2/requests/{request_id}/status?logs=1")
    assert status.status_code == 200 and status.json()["request_id"] == request_id
    for target in ("https://example.com/fal-ai/flux-2/klein/4b", "https://fal.run/v1/images/generations",
                   "https://rest.fal.ai/storage/upload/initiate", "http://fal.run/fal-ai/flux-2/klein/4b",
                   "https://fal.run/fal-ai/../v1/models", ""):  # fmt: skip
        refused = via_proxy("POST", target, json={"prompt": "x"})
        assert refused.status_code == 400 and refused.json()["error_type"] == (
            "proxy_target_refused" if target else "invalid_request_error"
        ), (target, refused.text)
