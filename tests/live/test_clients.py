"""Real third-party clients, unmodified, against a live server: the README's "Clients" snippets, run as
written (Python, Node, curl), and the Node suite in tests/js/ (openai, @fal-ai/client through proxyUrl,
the AI SDK with @ai-sdk/openai, @ai-sdk/openai-compatible, @ai-sdk/fal and @ai-sdk/gateway)."""

import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from kleinserve.models import Variant

from support.live_server import LiveServer
from support.node_packages import JS_DIR, installed_node_modules
from support.readme import readme_snippets

README_ADDRESS = "127.0.0.1:8000"


SNIPPETS = readme_snippets()


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    with LiveServer(
        tmp_path_factory.mktemp("clients-server"),
        "--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",
        # the tiny distilled checkpoint also as 9B: the AI Gateway model page snippet asks for it
        "--model", f"flux.2-klein-9b={checkpoints[Variant.DISTILLED]}",
        "--api-key", "unused", "--api-key", "js-suite-key", "--no-warmup",
    ) as live:  # fmt: skip
        yield live


@pytest.fixture(scope="module")
def node_modules():
    return installed_node_modules()


@pytest.mark.parametrize(("heading", "language", "code"), SNIPPETS, ids=[h for h, _, _ in SNIPPETS])
def test_readme_client_snippet(heading, language, code, server, fal_server, node_modules, tmp_path):
    target = fal_server if heading == "fal, Python" else server
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **fal_environment(fal_server)}
    code = code.replace(f"http://{README_ADDRESS}", target.url)
    if language == "python":
        command = [sys.executable, "-c", code]
    elif language == "js":
        script = JS_DIR / f".readme-{tmp_path.name}.mjs"  # beside node_modules, so imports resolve
        script.write_text(code)
        command = ["node", str(script)]
    else:
        command = ["bash", "-c", "set -euo pipefail\n" + code]
    try:
        run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    finally:
        if language == "js":
            script.unlink()
    assert run.returncode == 0, f"{heading} snippet failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    written = sorted(tmp_path.glob("*.png"))
    assert written, f"{heading} snippet wrote no image"
    for path in written:
        with Image.open(path) as image:
            image.load()
            assert image.width >= 64 and image.height >= 64, path


def fal_environment(fal_server) -> dict:
    """What the README tells fal-client users to set (fal-client reads it at import)."""
    return {
        "FAL_RUN_HOST": f"127.0.0.1:{fal_server.port}",
        "FAL_QUEUE_RUN_HOST": f"127.0.0.1:{fal_server.port}/queue",
        "SSL_CERT_FILE": fal_server.certificate,
        "FAL_KEY": "unused",
    }


def test_node_client_suite(server, node_modules):
    env = {**os.environ, "KLEINSERVE_URL": server.url, "KLEINSERVE_API_KEY": "js-suite-key"}
    run = subprocess.run(
        ["node", "--test", "--test-reporter=tap"], cwd=JS_DIR, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    summary = dict(re.findall(r"^# (tests|pass|fail|cancelled|skipped) (\d+)$", run.stdout, re.M))
    assert run.returncode == 0 and summary.get("fail") == "0", run.stdout[-6000:] + run.stderr[-3000:]
    assert int(summary["pass"]) >= 45 and summary["skipped"] == "0", summary
