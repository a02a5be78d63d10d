"""Standard Webhooks signatures (https://www.standardwebhooks.com), as Replicate's clients check them.

Each delivery carries `webhook-id` (the same on every retry of one message), `webhook-timestamp` (unix
seconds at the attempt) and `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`,
the key being the secret `whsec_<base64 of the key bytes>` that GET /v1/webhooks/default/secret returns.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

PREFIX = "whsec_"
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64
NEW_KEY_BYTES = 32
SECRET_FILE = "webhook-secret"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(NEW_KEY_BYTES)).decode("ascii")


def key_bytes(secret: str) -> bytes:
    """The HMAC key in `whsec_<base64>`; ValueError saying the expected form otherwise."""
    if not secret.startswith(PREFIX):
        raise ValueError(f"a webhook secret looks like {PREFIX}<base64>, e.g. {new_secret()}")
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the part after {PREFIX} must be base64") from exc
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"the key must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, got {len(key)}")
    return key


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secret: str, message_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt to send `body` (exactly the bytes sent)."""
    timestamp = int(time.time() if now is None else now)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, message_id, timestamp, body),
    }


def stored_secret(data_dir: Path) -> str:
    """The secret kept in `data_dir`, made (owner-only file) on first use."""
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "x", encoding="ascii", opener=_owner_only) as file:
                file.write(new_secret() + "\n")
        except FileExistsError:  # another process made it first
            pass
    secret = path.read_text(encoding="ascii").strip()
    try:
        key_bytes(secret)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc} (delete the file to make a new secret)") from exc
    return secret


def _owner_only(path, flags):
    return os.open(path, flags, 0o600)
