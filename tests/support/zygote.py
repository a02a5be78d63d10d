"""kleinserve processes for the tests, forked from one process that has already imported torch, diffusers and
transformers (a "zygote"), instead of each importing them again: that costs about 7 s of CPU per process
(measured with cached bytecode on this 2-core machine), and a test run starts about a hundred servers and
workers.

A forked child is a real kleinserve process: its own pid, signals, sockets, files and log, running
`kleinserve.cli.main` with its arguments. The zygote never imports kleinserve, so no module state of ours
(pids in connection names, worker ids, locks) is shared between servers; the child reseeds Python's, numpy's
and torch's random generators. It serves a process only when the environment asked for equals its own except
for KLEINSERVE_*, AWS_* and PYTEST_CURRENT_TEST (read when used, never at import); any other
difference (HF_HOME, say, which huggingface_hub reads at import) starts a plain subprocess.

Run as a script, this file is the zygote: `python zygote.py SOCKET`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PRELOAD = (
    "torch", "numpy", "PIL.Image", "safetensors.torch", "transformers", "diffusers",
    "diffusers.models.transformers.transformer_flux2", "diffusers.models.autoencoders.autoencoder_kl_flux2",
    "diffusers.loaders.lora_pipeline", "transformers.models.qwen3.modeling_qwen3",
    "transformers.models.qwen2.tokenization_qwen2", "transformers.models.vit.modeling_vit",
    "fastapi", "uvicorn", "pydantic", "pydantic_settings", "httpx", "prometheus_client", "psycopg",
)  # fmt: skip
PER_PROCESS = ("KLEINSERVE_", "AWS_", "PYTEST_CURRENT_TEST")  # pytest sets the last one for each test phase
POLL_S = 0.02


class ForkedProcess:
    """The part of subprocess.Popen the tests use, for a process the zygote forked (its parent, which
    reaps it and writes its exit status to `exit_file`)."""

    def __init__(self, pid: int, exit_file: Path):
        self.pid = pid
        self.returncode: int | None = None
        self._exit_file = exit_file

    def poll(self) -> int | None:
        if self.returncode is None and self._exit_file.exists():
            self.returncode = int(self._exit_file.read_text())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"kleinserve pid {self.pid}", timeout)
            time.sleep(POLL_S)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never signal a pid that may have been reused
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    def __init__(self):
        self._folder = Path(tempfile.mkdtemp(prefix="kleinserve-zygote-"))
        self._socket = self._folder / "socket"
        self._env = dict(os.environ)
        self._count = 0
        log = self._folder / "zygote.log"
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(self._socket)],
            env=self._env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log.open("a"),
        )  # fmt: skip
        if self.process.stdout.readline() != b"ready\n":
            raise RuntimeError(f"the zygote did not start:\n{log.read_text()}")

    def serves(self, env: dict) -> bool:
        differing = {key for key in env.keys() | self._env.keys() if env.get(key) != self._env.get(key)}
        return self.process.poll() is None and all(key.startswith(PER_PROCESS) for key in differing)

    def spawn(self, args: list[str], env: dict, log_path: Path) -> ForkedProcess:
        self._count += 1
        exit_file = self._folder / f"{self._count}.exit"
        request = {"args": args, "env": env, "cwd": os.getcwd(), "log": str(log_path), "exit": str(exit_file)}
        with socket.socket(socket.AF_UNIX) as connection:
            connection.connect(str(self._socket))
            connection.sendall(json.dumps(request).encode() + b"\n")
            pid = int(connection.makefile().readline())
        return ForkedProcess(pid, exit_file)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        shutil.rmtree(self._folder, ignore_errors=True)


_zygote: Zygote | None = None
_wanted = False


def enable() -> None:
    """Fork kleinserve processes from a zygote, started at the first one (the tests' conftest enables it;
    benchmarks keep plain subprocesses)."""
    global _wanted
    _wanted = True


def disable() -> None:
    global _wanted, _zygote
    _wanted = False
    if _zygote is not None:
        _zygote.close()
        _zygote = None


def start_kleinserve(args: list[str], env: dict, log_path: Path):
    """`python -m kleinserve ARGS` with `env`, stdout and stderr appended to `log_path`: forked from the
    zygote when one is enabled and serves this environment, else a subprocess (a Popen or a ForkedProcess)."""
    global _zygote
    if _wanted and _zygote is None:
        _zygote = Zygote()
    if _zygote is not None and _zygote.serves(env):
        return _zygote.spawn(args, env, log_path)
    with log_path.open("a") as log:
        return subprocess.Popen([sys.executable, "-m", "kleinserve", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env)  # fmt: skip


@dataclass
class Finished:
    returncode: int
    output: str  # stdout and stderr as one stream, as a terminal shows them


def run_kleinserve(args: list[str], env: dict | None = None, timeout: float = 120) -> Finished:
    """`python -m kleinserve ARGS` to its end (a start that is refused, say): its exit code and output."""
    with tempfile.TemporaryDirectory(prefix="kleinserve-run-") as folder:
        log_path = Path(folder) / "output.log"
        process = start_kleinserve(args, dict(os.environ if env is None else env), log_path)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        return Finished(process.returncode, log_path.read_text())


# --- the zygote itself ------------------------------------------------------------------------------------


def _serve(socket_path: str) -> None:
    import importlib
    import select

    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(socket_path)
    listener.listen(64)
    exit_files: dict[int, str] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        if select.select([listener], [], [], 0.1)[0]:
            connection, _ = listener.accept()
            with connection:
                request = json.loads(connection.makefile().readline())
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    connection.close()
                    _run_child(request)
                exit_files[pid] = request["exit"]
                connection.sendall(f"{pid}\n".encode())
        _reap(exit_files)


def _reap(exit_files: dict[int, str]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        path = exit_files.pop(pid)
        Path(path + ".tmp").write_text(str(os.waitstatus_to_exitcode(status)))
        os.replace(path + ".tmp", path)  # the client never reads a half-written status


def _run_child(request: dict) -> None:
    """In the forked child: become `python -m kleinserve ARGS` and exit as that process would."""
    import atexit
    import random
    import threading
    import traceback

    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()
        sys.modules["numpy"].random.seed()
        sys.modules["torch"].seed()
        sys.argv = [sys.executable, "-m", "kleinserve", *request["args"]]
        from kleinserve.cli import main

        code = main(request["args"])
    except SystemExit as exit:  # as the interpreter treats it: None is 0, a message is printed and is 1
        code = exit.code if isinstance(exit.code, int | None) else 1
        if code == 1 and not isinstance(exit.code, int):
            print(exit.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    try:
        for thread in threading.enumerate():  # what the interpreter does at exit, then its exit handlers
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code or 0)


if __name__ == "__main__":
    _serve(sys.argv[1])
