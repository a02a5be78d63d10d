"""kleinserve's image run with podman, for tests/container: the image is built by container/build.sh (cached
layers: about 2 minutes for an unchanged tree); each Container is one `podman run -d` of it, with
named volumes made and removed by the test, stopped and removed by name at the end.

podman runs with container/containers.conf (runc, no ulimits: what this sandbox needs). A container either
publishes the image's port 8000 at 127.0.0.1:PORT (`-p`, podman's bridge network: the one-process tests), or
shares the host's network (`--network host`) and listens on PORT itself (KLEINSERVE_PORT), which lets it
reach PostgreSQL and the S3 server on the host's loopback (the scaled-out test)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx

from support.live_server import free_port

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "container" / "containers.conf"
IMAGE = os.environ.get("KLEINSERVE_TEST_IMAGE", "localhost/kleinserve:test")
POLL_S = 0.1


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONF))}
    done = subprocess.run(["podman", *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and done.returncode != 0:
        command = " ".join(args)
        raise RuntimeError(f"podman {command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def build_image() -> tuple[str, float]:
    """container/build.sh with IMAGE set (its output in the error if it fails); (image, seconds)."""
    started = time.monotonic()
    env = {**os.environ, "IMAGE": IMAGE}
    done = subprocess.run(["bash", str(ROOT / "container" / "build.sh")], capture_output=True, text=True,
                          env=env, timeout=3600)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"container/build.sh failed:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}")
    return IMAGE, time.monotonic() - started


def new_volume() -> str:
    name = f"kleinserve-test-{uuid.uuid4().hex[:10]}"
    podman("volume", "create", name)
    return name


def remove_volume(name: str) -> None:
    podman("volume", "rm", "-f", name, check=False)


class Container:
    """`podman run -d IMAGE *args`, /data on the volume `data`, reached at 127.0.0.1 on a free port: published
    from the container's 8000 (`publish`), else on the host network."""

    def __init__(self, image: str, *args: str, data: str, env: dict | None = None,
                 hostname: str | None = None, healthcheck: bool = True, publish: bool = False):  # fmt: skip
        self.image = image
        self.args = list(args)
        self.data = data
        self.env = env or {}
        self.port = free_port()
        self.hostname = hostname
        self.healthcheck = healthcheck
        self.publish = publish
        self.name: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 300.0) -> Container:
        self.name = f"kleinserve-test-{uuid.uuid4().hex[:10]}"
        options = ["--volume", f"{self.data}:/data"]
        if self.publish:
            options += ["--publish", f"127.0.0.1:{self.port}:8000"]
        else:
            options += ["--network", "host", "--env", f"KLEINSERVE_PORT={self.port}"]
        options += [arg for key, value in self.env.items() for arg in ("--env", f"{key}={value}")]
        options += ["--hostname", self.hostname] if self.hostname else []
        options += [] if self.healthcheck else ["--no-healthcheck"]
        podman("run", "-d", "--name", self.name, *options, self.image, *self.args)
        if ready_timeout > 0:
            self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"container {self.name} exited ({self.exit_code()}):\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(POLL_S)
        raise RuntimeError(f"container {self.name} not ready after {timeout} s:\n{self.logs()}")

    def running(self) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"

    def exit_code(self) -> int:
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())

    def signal(self, name: str) -> None:
        podman("kill", "--signal", name, self.name)

    def wait(self, timeout: float = 120.0) -> int:
        return int(podman("wait", self.name, timeout=timeout).stdout.strip())

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return (done.stdout + done.stderr)[-8000:]

    def remove(self) -> None:
        """Stopped (SIGTERM, then SIGKILL after 10 s) and removed with its anonymous volumes; `data` stays."""
        if self.name:
            podman("rm", "-f", "-v", "-t", "10", self.name, check=False)  # -v: its anonymous /hf-cache
            self.name = None


def podman_missing() -> str | None:
    """Why the container tests cannot run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman runc; see README 'Containers')"
    return None
