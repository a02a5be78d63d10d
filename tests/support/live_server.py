"""A real `kleinserve serve` process on 127.0.0.1, for tests that talk to it over HTTP and for the benchmarks
(benchmarks/bench_http.py imports this file; it needs only the standard library and httpx)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx

from support.zygote import ForkedProcess, start_kleinserve

POLL_S = 0.05  # between readiness checks


def self_signed_certificate(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key (made with the openssl command)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, data_dir: Path, *args: str, env: dict | None = None):
        self.data_dir = data_dir
        self.args = list(args)
        self.env = env or {}
        self.port = free_port()
        self.process: subprocess.Popen | ForkedProcess | None = None
        self.log_path = data_dir / "server.log"

    @property
    def certificate(self) -> str | None:
        """The certificate file when serving TLS (clients verify against it)."""
        if "--ssl-certfile" in self.args:
            return self.args[self.args.index("--ssl-certfile") + 1]
        return None

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.certificate)

    @property
    def url(self) -> str:
        return f"{'https' if self.certificate else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> LiveServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = ["serve", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.args]
        self.process = start_kleinserve(args, {**os.environ, **self.env}, self.log_path)
        if timeout > 0:
            self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Poll /ready every POLL_S until it answers 200, the process exits, or the deadline passes."""
        deadline = time.monotonic() + timeout
        verify = self.ssl_context()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                ready = httpx.get(self.url + "/ready", timeout=2, verify=verify)
                if ready.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(POLL_S)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def stop(self, hard: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
