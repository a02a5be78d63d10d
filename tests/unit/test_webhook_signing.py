"""Standard Webhooks signatures: the spec's published vector, a hand-computed HMAC, Replicate's validator,
the secret's form and where it is kept, and a sender that signs exactly the bytes it sends on every retry."""

import asyncio
import base64
import hashlib
import hmac
import json
import stat
from contextlib import asynccontextmanager

import pytest
from pydantic import ValidationError

from kleinserve import webhook_signing as signing
from kleinserve.service.webhooks import Delivery, WebhookSender, message_id
from kleinserve.settings import Settings

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
BODY = b'{"request_id":"abc","status":"OK"}'


def test_the_standard_webhooks_published_vector():
    # standard-webhooks/standard-webhooks libraries' test vector
    secret, msg, ts = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    got = signing.signature(secret, msg, ts, b'{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_headers_are_the_hmac_of_id_timestamp_and_body():
    headers = signing.signed_headers(SECRET, "msg_abc", BODY, now=1700000000.9)
    assert headers["webhook-id"] == "msg_abc" and headers["webhook-timestamp"] == "1700000000"
    digest = hmac.new(bytes(range(32)), b"msg_abc.1700000000." + BODY, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()


def test_replicate_validates_the_signature_and_rejects_a_tampered_body():
    webhook = pytest.importorskip("replicate.webhook")
    headers = signing.signed_headers(SECRET, "msg_abc", BODY)
    secret = webhook.WebhookSigningSecret(key=SECRET)
    webhook.Webhooks.validate(headers=headers, body=BODY.decode(), secret=secret, tolerance=60)
    with pytest.raises(webhook.InvalidSignatureError):
        webhook.Webhooks.validate(headers=headers, body=BODY.decode().replace("OK", "KO"), secret=secret)


def test_new_secrets_have_the_standard_form():
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(signing.key_bytes(secret)) == signing.NEW_KEY_BYTES
    assert secret != signing.new_secret()


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_"),
        ("whsec_not base64!", "base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes"),
        ("whsec_" + base64.b64encode(bytes(65)).decode(), "24 to 64 bytes"),
    ],
)
def test_a_malformed_secret_is_refused_saying_why(secret, says):
    with pytest.raises(ValueError, match=says):
        signing.key_bytes(secret)
    with pytest.raises(ValidationError, match=says):
        Settings(webhook_secret=secret)


def test_the_stored_secret_is_made_once_and_kept_owner_only(tmp_path):
    first = signing.stored_secret(tmp_path / "data")
    assert signing.stored_secret(tmp_path / "data") == first
    path = tmp_path / "data" / signing.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    signing.key_bytes(first)


def test_a_damaged_stored_secret_names_its_file(tmp_path):
    (tmp_path / signing.SECRET_FILE).write_text("garbage\n")
    with pytest.raises(ValueError, match=r"webhook-secret.*delete the file"):
        signing.stored_secret(tmp_path)


class _FlakyOutbound:
    """Answers 500 to the first `failures` requests, then 200; records what each request carried."""

    def __init__(self, failures: int):
        self.failures, self.sent = failures, []

    @asynccontextmanager
    async def request(self, method, url, field, **kwargs):
        self.sent.append(kwargs)
        status = 500 if len(self.sent) <= self.failures else 200
        yield type("Response", (), {"status_code": status})()


def test_every_retry_keeps_the_id_and_signs_the_bytes_sent():
    outbound, logs = _FlakyOutbound(failures=2), []

    async def job_log(job_id, message, level):
        logs.append(message)

    sender = WebhookSender(outbound, job_log, secret=SECRET, attempts=3, retry_base_s=0, timeout_s=5)
    assert asyncio.run(sender.deliver("job1", "http://example.com/hook", {"status": "OK", "x": [1]}))
    assert len(outbound.sent) == 3 and logs[-1] == "webhook delivered (attempt 3)"
    for sent in outbound.sent:
        headers, content = sent["headers"], sent["content"]
        assert json.loads(content) == {"status": "OK", "x": [1]}
        assert headers["webhook-id"] == message_id("job1") == "msg_job1"
        expected = signing.signature(SECRET, "msg_job1", int(headers["webhook-timestamp"]), content)
        assert headers["webhook-signature"] == expected
        assert headers["content-type"] == "application/json"


def test_an_event_while_the_job_runs_is_its_own_message_sent_once_and_kept_off_the_jobs_logs():
    """Replicate's start/logs/output events: one attempt (not retried), webhook-id msg_<job>_<event>, no log
    line on the job (whose logs the events carry)."""
    outbound, logs = _FlakyOutbound(failures=1), []

    async def job_log(job_id, message, level):
        logs.append(message)

    sender = WebhookSender(outbound, job_log, secret=SECRET, attempts=3, retry_base_s=0, timeout_s=5)
    failed = Delivery("webhook", event="logs_1", once=True)
    delivered = Delivery("webhook", event="start", once=True)
    assert not asyncio.run(sender.deliver("job1", "http://example.com/hook", {"n": 1}, failed))
    assert asyncio.run(sender.deliver("job1", "http://example.com/hook", {"n": 2}, delivered))
    ids = [sent["headers"]["webhook-id"] for sent in outbound.sent]
    assert (
        ids
        == ["msg_job1_logs_1", "msg_job1_start"]
        == [message_id("job1", "logs_1"), message_id("job1", "start")]
    )
    assert logs == []
