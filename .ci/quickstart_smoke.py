"""A newcomer's path, as CI's: run the README's first quickstart command in a fresh copy of the tree (its
own fresh venv, no test extras), wait for /ready, then run the Quickstart section's curl examples and
check that each answers with real images of the asked size.

Standard library only: it runs with the machine's python3, before any venv exists."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 900  # a fresh venv installs torch and the rest first
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def quickstart_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]


def start_command(section: str) -> str:
    return re.findall(r"```sh\n(.+?)\n```", section, re.S)[0]


def curl_examples(section: str) -> list[str]:
    return re.findall(r"`(curl [^`]+)`", section)


def copy_tree(destination: Path) -> None:
    """Tracked and untracked-but-not-ignored files, as a fresh clone of this work tree would have."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, names):
        source = ROOT / name.decode()
        if source.is_file():
            target = destination / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(base: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            fail(f"the quickstart command exited with {server.returncode}", log)
        try:
            with urllib.request.urlopen(f"{base}/ready", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    fail(f"no 200 from {base}/ready within {READY_TIMEOUT_S} s", log)


def stop(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def fail(message: str, log: Path | None = None) -> None:
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    sys.exit(f"quickstart smoke FAILED: {message}\n--- server output (tail) ---\n{tail}")


def images_in(answer: dict) -> list[bytes]:
    """The image bytes an OpenAI (data[].b64_json / url) or fal (images[].url) answer holds."""
    found = []
    for item in answer.get("data", []) + answer.get("images", []):
        if item.get("b64_json"):
            found.append(base64.b64decode(item["b64_json"]))
        elif item.get("url"):
            with urllib.request.urlopen(item["url"], timeout=30) as response:
                found.append(response.read())
    return found


def png_size(data: bytes) -> tuple[int, int]:
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"not a PNG: {data[:16]!r}")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def expected_size(curl: str) -> tuple[int, int]:
    if match := re.search(r'"size": "(\d+)x(\d+)"', curl):
        return int(match[1]), int(match[2])
    presets = {"square": (512, 512), "square_hd": (1024, 1024), "landscape_4_3": (1024, 768)}
    match = re.search(r'"image_size": "(\w+)"', curl)
    return presets[match[1] if match else "landscape_4_3"]


def check_curl(curl: str, port: int) -> str:
    command = curl.replace("localhost:8000", f"127.0.0.1:{port}")
    run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        raise AssertionError(f"exit {run.returncode}: {run.stderr.strip()}")
    answer = json.loads(run.stdout)
    images = images_in(answer)
    if not images:
        raise AssertionError(f"no image in the answer: {run.stdout[:300]}")
    sizes = {png_size(image) for image in images}
    if sizes != {expected_size(curl)}:
        raise AssertionError(f"image sizes {sizes}, expected {expected_size(curl)}")
    return f"{len(images)} image(s) {sizes.pop()}"


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("quickstart smoke: stopped"))  # runs the finally below
    section = quickstart_section()
    command, curls = start_command(section), curl_examples(section)
    if not curls:
        fail("the README's Quickstart shows no curl example")
    with tempfile.TemporaryDirectory(prefix="kleinserve-quickstart-") as tmp:
        tree, log = Path(tmp) / "tree", Path(tmp) / "server.log"
        copy_tree(tree)
        port = free_port()
        env = {**os.environ, "KLEINSERVE_PORT": str(port), "KLEINSERVE_DATA_DIR": f"{tmp}/data"}
        env.pop("VIRTUAL_ENV", None)
        print(f"quickstart smoke: {command}  (in a fresh copy, port {port})", flush=True)
        with log.open("w") as out:
            server = subprocess.Popen(
                ["bash", "-c", command],
                cwd=tree,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_ready(f"http://127.0.0.1:{port}", server, log)
            for curl in curls:
                try:
                    print(f"  ok   {curl}  -> {check_curl(curl, port)}", flush=True)
                except Exception as exc:
                    fail(f"{curl}\n  {exc}", log)
        finally:
            stop(server)
    print(f"quickstart smoke: the server started; {len(curls)} README curl example(s) answered with images")


if __name__ == "__main__":
    main()
