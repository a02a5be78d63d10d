"""kleinserve scaled out on 127.0.0.1, for tests and benchmarks/bench_scale.py: API servers (`kleinserve serve
--role api`, LiveServer) and workers (`kleinserve worker`, WorkerProcess), each a process of its own, sharing
one PostgreSQL database and one image store. Needs only the standard library and httpx."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from support.live_server import LiveServer
from support.zygote import ForkedProcess, start_kleinserve

POLL_S = 0.05
STARTED_BY = re.compile(r"by worker \S+ \(pid (\d+)\)")


class WorkerProcess:
    def __init__(self, data_dir: Path, *args: str, env: dict | None = None, name: str = "worker"):
        self.data_dir = data_dir
        self.args = list(args)
        self.env = env or {}
        self.log_path = data_dir / f"{name}.log"
        self.process: subprocess.Popen | ForkedProcess | None = None

    def start(self) -> WorkerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = ["worker", "--data-dir", str(self.data_dir), *self.args]
        self.process = start_kleinserve(args, {**os.environ, **self.env}, self.log_path)
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, hard: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


class Cluster:
    """`workers` workers and one API server; `shared` flags go to every process, `worker_flags` to workers,
    `api_flags` to API servers (more can be added with `add_api`); `env` to every process, `worker_env[i]`
    to worker i."""

    def __init__(
        self, root: Path, url: str, *, workers: int, worker_flags=(), api_flags=(), shared=(), env=None,
        worker_env=None,
    ):  # fmt: skip
        self.root = root
        self.env = env or {}
        self.shared = ["--database-url", url, *shared]
        self.api_flags = list(api_flags)
        worker_env = worker_env or [{}] * workers
        self.workers = [
            WorkerProcess(root / "workers", *self.shared, *worker_flags, env={**self.env, **worker_env[i]},
                          name=f"worker-{i}")
            for i in range(workers)
        ]  # fmt: skip
        self.apis: list[LiveServer] = []

    def start(self, timeout: float = 300.0) -> Cluster:
        for worker in self.workers:
            worker.start()
        self.add_api(timeout)
        self.wait_for_workers(len(self.workers), timeout)
        return self

    def add_api(self, timeout: float = 300.0) -> LiveServer:
        api = LiveServer(self.root / f"api-{len(self.apis)}", "--role", "api", *self.shared, *self.api_flags,
                         env=self.env)  # fmt: skip
        self.apis.append(api)
        api.start(timeout=0)
        self._wait(lambda: self._answers(api), timeout, "the API server to be ready")
        return api

    @property
    def api(self) -> LiveServer:
        return self.apis[-1]

    def wait_for_workers(self, count: int, timeout: float = 300.0) -> None:
        """Until the API server lists `count` live workers with every model ready."""

        def ready() -> bool:
            models = httpx.get(f"{self.api.url}/health", timeout=10).json()["models"]
            live = [m["state"] == "ready" and m.get("workers") == count for m in models.values()]
            return bool(live) and all(live)

        self._wait(ready, timeout, f"{count} ready worker(s)")

    def _answers(self, api: LiveServer) -> bool:
        if api.process.poll() is not None:
            raise RuntimeError(f"API server exited:\n{api.log()}")
        try:
            return httpx.get(f"{api.url}/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for worker in self.workers:
                if worker.process.poll() is not None and worker.process.returncode not in (0, -9):
                    raise RuntimeError(f"a worker exited with {worker.process.returncode}:\n{worker.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")
            time.sleep(POLL_S)

    def worker_of(self, pid: int) -> WorkerProcess:
        return next(worker for worker in self.workers if worker.pid == pid)

    def stop(self) -> None:
        for api in self.apis:
            api.stop()
        for worker in self.workers:
            worker.stop()

    def logs(self) -> str:
        parts = [f"--- {w.log_path.name}\n{w.log()[-4000:]}" for w in self.workers]
        parts += [f"--- {a.log_path}\n{a.log()[-4000:]}" for a in self.apis]
        return "\n".join(parts)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def started_by(job: dict) -> list[int]:
    """The pids of the workers that started a job (a job record from /v1/jobs/{id}), one per attempt."""
    return [int(match.group(1)) for entry in job["logs"] if (match := STARTED_BY.search(entry["message"]))]
