"""Storage keys, the rate limiter and settings, without a server."""

import time

import pytest
from pydantic import ValidationError

from kleinserve.api.access import RateLimiter
from kleinserve.settings import Settings
from kleinserve.storage.store import LocalStore, image_key


def test_rate_limiter_refills_over_time(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    limiter = RateLimiter(per_minute=2)
    assert limiter.retry_after("a") is None and limiter.retry_after("a") is None
    assert limiter.retry_after("a") == 30  # one token comes back every 30 s
    assert limiter.retry_after("b") is None  # callers are separate
    clock[0] += 30
    assert limiter.retry_after("a") is None


def test_rate_limiter_forgets_idle_callers(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    limiter = RateLimiter(per_minute=60)
    monkeypatch.setattr(RateLimiter, "MAX_CALLERS", 3)
    for caller in "abcd":
        limiter.retry_after(caller)
    clock[0] += 60  # every bucket is full again
    limiter.retry_after("e")
    assert set(limiter._buckets) == {"e"}


def test_local_store_keys_and_paths(tmp_path):
    store = LocalStore(tmp_path)
    key = image_key("0" * 32, 1, "jpeg")
    assert key == "0" * 32 + "/1.jpg"
    store.put(key, b"bytes")
    found = store.local_file(key)
    assert found.path.read_bytes() == b"bytes" and found.content_type == "image/jpeg"
    assert store.url(key, "https://img.example.com/") == f"https://img.example.com/files/{key}"
    for bad in ("../jobs.sqlite3", "0" * 32 + "/../../x.png", "abc/0.png", "0" * 32 + "/0.exe"):
        assert store.local_file(bad) is None
        with pytest.raises(ValueError):
            store.put(bad, b"x")
    store.delete_folder("0" * 32)
    assert store.local_file(key) is None
    assert not list(tmp_path.glob("**/.partial-*"))


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KLEINSERVE_API_KEYS", "one, two")
    monkeypatch.setenv("KLEINSERVE_MODELS", "flux.2-klein-4b")
    monkeypatch.setenv("KLEINSERVE_DATA_DIR", str(tmp_path))
    settings = Settings(port=9000)  # explicit values (CLI flags) win over the environment
    assert settings.api_keys == ("one", "two") and settings.models == ("flux.2-klein-4b",)
    assert settings.port == 9000 and settings.database_path == tmp_path / "jobs.sqlite3"
    with pytest.raises(ValidationError, match="max_queue_depth"):
        Settings(max_queue_depth=0)
