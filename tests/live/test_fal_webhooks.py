"""Webhooks (?fal_webhook=): one delivery per job, retried with backoff when the receiver fails, logged,
and never changing the job's result; every attempt is signed (Standard Webhooks, checked by replicate's
validator)."""

import time

import httpx
import pytest

ENDPOINT = "fal-ai/flux-2/klein/4b"
SMALL = {"width": 64, "height": 64}


def test_each_job_is_delivered_exactly_once(fal, webhooks):
    handles = [
        fal.submit(
            ENDPOINT,
            arguments={"prompt": f"hook {i}", "image_size": SMALL, "seed": i},
            webhook_url=f"{webhooks.url}/once",
        )
        for i in range(3)
    ]
    results = {handle.request_id: handle.get() for handle in handles}
    deliveries = webhooks.deliveries("once", at_least=3)
    time.sleep(1.0)  # nothing more arrives
    assert len(webhooks.received["once"]) == 3
    assert sorted(d["request_id"] for d in deliveries) == sorted(results)
    for delivery in deliveries:
        assert delivery["status"] == "OK" and delivery["error"] is None
        assert delivery["gateway_request_id"] == delivery["request_id"]
        assert delivery["payload"] == results[delivery["request_id"]]


def test_a_failing_receiver_is_retried_and_the_result_is_unaffected(fal, webhooks):
    webhooks.failures["flaky"] = 2  # two 500s, then 200
    handle = fal.submit(ENDPOINT, arguments={"prompt": "flaky", "image_size": SMALL},
                        webhook_url=f"{webhooks.url}/flaky")  # fmt: skip
    result = handle.get()
    (delivery,) = webhooks.deliveries("flaky", at_least=1)
    assert webhooks.attempts["flaky"] == 3 and delivery["payload"] == result
    messages = _messages(fal, handle.request_id, "webhook delivered")
    assert [m for m in messages if m.startswith("webhook")] == [
        "webhook attempt 1/3 failed: HTTP 500; retrying in 0.2 s",
        "webhook attempt 2/3 failed: HTTP 500; retrying in 0.4 s",
        "webhook delivered (attempt 3)",
    ]
    assert fal.result(ENDPOINT, handle.request_id) == result


def test_deliveries_are_signed_with_the_servers_secret(fal, fal_server, webhooks):
    webhook = pytest.importorskip("replicate.webhook")
    answer = httpx.get(f"{fal_server.url}/v1/webhooks/default/secret", verify=fal_server.ssl_context())
    assert answer.status_code == 200 and answer.json()["key"].startswith("whsec_")
    secret = webhook.WebhookSigningSecret(key=answer.json()["key"])
    webhooks.failures["signed"] = 1  # one 500, then 200: the retry keeps its webhook-id
    handle = fal.submit(ENDPOINT, arguments={"prompt": "signed", "image_size": SMALL},
                        webhook_url=f"{webhooks.url}/signed")  # fmt: skip
    handle.get()
    webhooks.deliveries("signed", at_least=1)
    attempts = webhooks.raw["signed"]
    assert len(attempts) == 2
    assert {headers["webhook-id"] for headers, _ in attempts} == {f"msg_{handle.request_id}"}
    for headers, body in attempts:
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
        webhook.Webhooks.validate(headers=headers, body=body.decode(), secret=secret, tolerance=60)
    headers, body = attempts[-1]
    with pytest.raises(webhook.InvalidSignatureError):
        webhook.Webhooks.validate(headers=headers, body=body.decode().replace("OK", "KO", 1), secret=secret)


def test_a_receiver_that_never_answers_2xx_is_given_up_on(fal, webhooks):
    webhooks.failures["down"] = 100
    handle = fal.submit(ENDPOINT, arguments={"prompt": "down", "image_size": SMALL},
                        webhook_url=f"{webhooks.url}/down")  # fmt: skip
    assert handle.get()["images"]
    messages = _messages(fal, handle.request_id, "giving up")
    assert messages[-1] == "webhook attempt 3/3 failed: HTTP 500; giving up"
    assert webhooks.attempts["down"] == 3


def test_failed_and_cancelled_jobs_are_delivered_as_errors(fal, webhooks):
    busy = fal.submit(ENDPOINT, arguments={"prompt": "busy", "image_size": {"width": 1024, "height": 1024}})
    doomed = fal.submit(ENDPOINT, arguments={"prompt": "doomed", "image_size": SMALL},
                        webhook_url=f"{webhooks.url}/cancelled")  # fmt: skip
    doomed.cancel()
    (delivery,) = webhooks.deliveries("cancelled", at_least=1)
    assert delivery["request_id"] == doomed.request_id and delivery["status"] == "ERROR"
    assert "cancelled" in delivery["error"] and delivery["payload"] == {"detail": delivery["error"]}
    busy.get()


def _messages(fal, request_id: str, until: str, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        messages = [log["message"] for log in fal.status(ENDPOINT, request_id, with_logs=True).logs]
        if any(until in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.05)
