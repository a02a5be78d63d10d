"""A real S3 protocol server for tests: moto's server mode in a process of its own on 127.0.0.1, one per
session (`s3_endpoint`), the standard AWS variables that point boto3 at it (`s3_env`, for server processes
too), a client (`s3`) and a fresh bucket per test (`bucket`).

Import the fixtures into a test module: `from support.s3_server import bucket, s3, s3_endpoint, s3_env`.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import httpx
import pytest

from support.live_server import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server; stopped by its PID at the end."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_for(endpoint, process)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_for(endpoint: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"moto server exited with {process.returncode}"
        try:
            httpx.get(endpoint, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"moto server not answering at {endpoint}")


@pytest.fixture(scope="session")
def s3_env(s3_endpoint):
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}


@pytest.fixture(scope="session")
def s3(s3_env):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture
def bucket(s3) -> str:
    name = f"kleinserve-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name
