"""Shared fixtures: one tiny checkpoint per variant, built once per session in the real on-disk layout.

Every test gets its level of the test pyramid as a marker from the folder it is in: tests/unit (in-process,
no model weights, no server), tests/engine (loads or builds the tiny model in this process), tests/live
(starts a real kleinserve process, the CLI as a subprocess, PostgreSQL, an S3 server or Ray). Helpers the
tests share are in tests/support. The fast subset: `pytest -m unit` (or `pytest tests/unit`)."""

import os
import sys
from pathlib import Path

# This machine's environment sets PYTHONDONTWRITEBYTECODE=1, and the README's install skips byte-compiling
# (`--no-compile`), so every process the tests start would compile every module it imports from source: about
# 7 s of CPU per server for torch._dynamo, sympy, diffusers and the rest, in ~150 processes. Let this process
# and everything it starts write bytecode to __pycache__ once and read it after (written atomically, so
# concurrent processes are safe).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# One compute thread per process, inherited by every server, worker and benchmark a test starts: two xdist
# workers and their servers share this machine's cores, and torch's default (one spinning OpenMP thread per
# core in every process) made them fight (measured on 2 cores: bench and parity files 205 s, 100 s with this).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from filelock import FileLock

from kleinserve.engine import Engine
from kleinserve.models import Variant, resolve_model
from kleinserve.service.safety import write_tiny_classifier
from kleinserve.tiny import write_tiny_checkpoint

from support import zygote
from support.live_server import LiveServer, self_signed_certificate
from support.local_hosts import ImageHost, WebhookReceiver


@pytest.fixture(scope="session", autouse=True)
def safety_classifier(tmp_path_factory):
    """Every server a test starts runs the real safety checker code with a tiny random classifier (it passes
    images at the default threshold; threshold 0 flags them all)."""
    directory = tmp_path_factory.mktemp("safety-classifier")
    write_tiny_classifier(directory)
    os.environ["KLEINSERVE_SAFETY_MODEL"] = str(directory)
    return directory


@pytest.fixture(scope="session", autouse=True)
def forked_kleinserve_processes():
    """Servers and workers the tests start are forked from a process that has imported torch, diffusers and
    transformers once (support/zygote.py): about 7 s of CPU saved per process."""
    zygote.enable()
    yield
    zygote.disable()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Built once per run: pytest-xdist workers share the folder above their own temporary ones, and the
    first worker to get here builds while the others wait on the lock."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    root /= "checkpoints"
    with FileLock(f"{root}.lock"):
        if not root.exists():
            building = root.with_name("checkpoints-building")
            for variant in Variant:
                write_tiny_checkpoint(building / variant.value, variant)
            building.rename(root)
    return {variant: root / variant.value for variant in Variant}


@pytest.fixture(scope="session")
def engines(checkpoints):
    return {variant: Engine.load(resolve_model(str(path))) for variant, path in checkpoints.items()}


@pytest.fixture(scope="session")
def engine(engines):
    return engines[Variant.DISTILLED]


@pytest.fixture(scope="session")
def spec(engine):
    return engine.spec


@pytest.fixture(scope="session")
def image_host():
    host = ImageHost()
    yield host
    host.close()


@pytest.fixture(scope="session")
def webhooks():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def fal_server(checkpoints, tmp_path_factory):
    """One TLS server for the fal tests: 4B and Base 4B; image_urls and webhooks may reach 127.0.0.1."""
    directory = tmp_path_factory.mktemp("fal-server")
    cert, key = self_signed_certificate(directory)
    server = LiveServer(
        directory / "data",
        "--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",
        "--model", f"flux.2-klein-base-4b={checkpoints[Variant.BASE]}",
        "--ssl-certfile", cert, "--ssl-keyfile", key,
        "--allow-private-network", "127.0.0.1/32",
        "--image-fetch-timeout-s", "1.5",
        "--webhook-attempts", "3", "--webhook-retry-base-s", "0.2",
    )  # fmt: skip
    with server:
        yield server


@pytest.fixture(scope="session")
def fal(fal_server):
    """The unmodified fal_client package, pointed at fal_server only through its environment variables
    (it reads them once, at import)."""
    os.environ.update(
        FAL_RUN_HOST=f"127.0.0.1:{fal_server.port}",
        FAL_QUEUE_RUN_HOST=f"127.0.0.1:{fal_server.port}/queue",
        SSL_CERT_FILE=fal_server.certificate,
        FAL_KEY="any-key-the-server-is-open",
    )
    import fal_client

    assert f"https://127.0.0.1:{fal_server.port}/queue/" == fal_client.client.QUEUE_URL_FORMAT, (
        "fal_client was imported before its environment was set"
    )
    return fal_client


# The test pyramid ---------------------------------------------------------------------------------------

TIERS = ("unit", "engine", "live", "container")  # container: not in the CI command (README "Containers")
TESTS = Path(__file__).resolve().parent

# Parallel runs (pytest-xdist, `-n 2 --dist loadfile --no-loadscope-reorder`): a module's tests stay on one
# worker, so that a module-scoped server starts once, and the modules start in the order below (the longest
# first, so that none of them is left running alone at the end), then the others in their usual order.
LONGEST_FIRST = (
    "live/test_openapi_fuzz.py", "live/test_scale_out.py", "live/test_ray_serve.py", "live/test_faults.py",
    "live/test_server_lifecycle.py", "live/test_hostile.py", "engine/test_device_run.py",
    "live/test_clients.py", "live/test_fal_client.py", "live/test_console.py", "live/test_durable_queue.py",
    "engine/test_lora_parity.py", "live/test_replicate.py",
)  # fmt: skip


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = item.path.resolve().relative_to(TESTS).parts[0]
        if folder not in TIERS:
            raise pytest.UsageError(
                f"{item.nodeid}: a test belongs in tests/unit, tests/engine, tests/live, tests/container"
            )
        item.add_marker(folder)
    items.sort(key=_start_rank)  # stable: a module's tests keep their order


def _start_rank(item) -> int:
    module = item.path.resolve().relative_to(TESTS).as_posix()
    return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
