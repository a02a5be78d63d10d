"""The fal queue by hand, for tests that drive it over HTTP: submit a job, read its status and its result,
and wait for a condition. Each call takes the server's base URL."""

from __future__ import annotations

import time

import httpx

ENDPOINT = "fal-ai/flux-2/klein/4b"


def submit(url: str, body: dict, webhook: str | None = None, endpoint: str = ENDPOINT) -> str:
    params = {"fal_webhook": webhook} if webhook else {}
    answer = httpx.post(f"{url}/queue/{endpoint}", json=body, params=params, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


def status(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/queue/{ENDPOINT}/requests/{job_id}/status", timeout=30).json()


def result(url: str, job_id: str) -> dict:
    answer = httpx.get(f"{url}/queue/{ENDPOINT}/requests/{job_id}", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_until(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
