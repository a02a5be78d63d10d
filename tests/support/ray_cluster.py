"""A real Ray head for tests: on 127.0.0.1, with token authentication, owned and stopped by the test.

`ray start --head --block` runs as the leader of a new session; every Ray process it starts (GCS, raylet,
agents, workers, Serve's controller, proxy and replicas) inherits that session, so stop() ends exactly those,
by PID: SIGTERM to the leader (Ray drains and stops its processes), then SIGKILL to any left. `ray stop` is
never used: it kills every Ray process on the machine. The temporary directory is short because Ray's Unix
socket paths live in it.

Import the fixture into a test module: `from ray_cluster import ray_head`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from support.live_server import free_port

STARTED = "Ray runtime started"
# Ray turns --node-ip-address=127.0.0.1 into the machine's routable address unless multi-machine clusters are
# off (its single-machine mode); off, every Ray server binds loopback only.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class RayHead:
    def __init__(self, num_cpus: int = 8):
        self.num_cpus = num_cpus  # logical: what Ray may place, not cores
        self.directory = Path(tempfile.mkdtemp(prefix="ks-ray-", dir="/tmp"))
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.env = {**os.environ, **LOOPBACK_ONLY, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.process: subprocess.Popen | None = None
        self.log_path = self.directory / "ray-start.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> RayHead:
        ray = str(Path(sys.executable).parent / "ray")
        command = [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                   f"--ray-client-server-port={free_port()}", "--include-dashboard=false",
                   "--disable-usage-stats", f"--num-cpus={self.num_cpus}", "--num-gpus=0",
                   f"--temp-dir={self.directory / 't'}"]  # fmt: skip
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while STARTED not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray start failed:\n{self.log()}")
            time.sleep(0.2)
        return self

    def processes(self) -> dict[int, str]:
        """PID -> command line of every live process in the head's session (none once stopped)."""
        if self.process is None:
            return {}
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
                if fields[0] != "Z" and int(fields[3]) == self.process.pid:  # state, ..., session id
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError):
                continue  # exited meanwhile
        return found

    def replica_pids(self, app: str) -> list[int]:
        """The processes of one Serve application's replicas (Ray titles them ray::ServeReplica:APP:...)."""
        prefix = f"ray::ServeReplica:{app}:"
        return sorted(pid for pid, command in self.processes().items() if command.startswith(prefix))

    def stop(self, timeout: float = 60.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class ServeStatus:
    """Serve's own view of the applications (serve.status(), through a driver process connected with the
    token), sampled every half second: [(time, {app: {deployment: {state: replicas}}}), ...]."""

    SCRIPT = """
import json, sys, time
import ray
from ray import serve
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
while True:
    try:
        apps = serve.status().applications
    except Exception as exc:  # e.g. while the controller restarts; try again
        print(f"serve.status() failed: {exc!r}", file=sys.stderr, flush=True)
    else:
        states = {name: {d: dict(s.replica_states) for d, s in app.deployments.items()}
                  for name, app in apps.items()}
        print(json.dumps(states), flush=True)
    time.sleep(0.5)
"""

    def __init__(self, head: RayHead):
        self.samples: list[tuple[float, dict]] = []
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, head.address],
            stdout=subprocess.PIPE, stderr=(head.directory / "serve-status.log").open("a"), env=head.env,
            text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self.samples.append((time.monotonic(), json.loads(line)))
            except json.JSONDecodeError:
                continue

    def running(self, app: str, deployment: str) -> int | None:
        """RUNNING replicas of one deployment in the latest sample (None before the first)."""
        if not self.samples:
            return None
        return self.samples[-1][1].get(app, {}).get(deployment, {}).get("RUNNING", 0)

    def first_at(self, app: str, deployment: str, since: float, condition) -> float | None:
        """When a sample taken at or after `since` first met `condition({state: replicas})`."""
        for at, states in list(self.samples):
            if at >= since and condition(states.get(app, {}).get(deployment, {})):
                return at
        return None

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def ray_head(tmp_path):
    head = RayHead().start()
    yield head
    head.stop(timeout=10)  # Ray's own drain is not under test here; what is left after 10 s is killed
    left = head.processes()
    head.cleanup()
    assert not left, f"Ray processes outlived the test: {left}"
