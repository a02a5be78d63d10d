"""A real S3 protocol server for tests: moto's server mode in a process of its own on 127.0.0.1, one per
session (`s3_endpoint`), the standard AWS variables that point boto3 at it (`s3_env`, for server processes
too), a client (`s3`) and a fresh bucket per test (`bucket`).

Import the fixtures into a test module: `from support.s3_server import bucket, s3, s3_endpoint, s3_env`.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
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


class PortGate:
    """A TCP forwarder on a port of its own to `target_port` on 127.0.0.1, run on threads in the test
    process: `close` refuses new connections and cuts the open ones (the service behind it is unreachable,
    as in an outage), `open` forwards again on the same port. moto keeps its buckets in memory, so an outage
    of moto's S3 server is made with this gate in front of it rather than by stopping it."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def open(self) -> PortGate:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
