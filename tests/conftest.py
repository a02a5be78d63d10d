"""Shared fixtures: one tiny checkpoint per variant, built once per session in the real on-disk layout.

Every test gets one level of the test pyramid as a marker, from what its code uses (see
pytest_collection_modifyitems below): `live` starts a real server or runs the CLI as a subprocess, `engine`
loads the tiny model in this process, `unit` does neither. A test marked by hand keeps its own marker.
The fast subset: `pytest -m unit`."""

import functools
import inspect
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from kleinserve.engine import Engine
from kleinserve.models import Variant, resolve_model
from kleinserve.service.safety import write_tiny_classifier
from kleinserve.tiny import write_tiny_checkpoint


@pytest.fixture(scope="session", autouse=True)
def safety_classifier(tmp_path_factory):
    """Every server a test starts runs the real safety checker code with a tiny random classifier (it passes
    images at the default threshold; threshold 0 flags them all)."""
    directory = tmp_path_factory.mktemp("safety-classifier")
    write_tiny_classifier(directory)
    os.environ["KLEINSERVE_SAFETY_MODEL"] = str(directory)
    return directory


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {variant: write_tiny_checkpoint(root / variant.value, variant) for variant in Variant}


@pytest.fixture(scope="session")
def engines(checkpoints):
    return {variant: Engine.load(resolve_model(str(path))) for variant, path in checkpoints.items()}


@pytest.fixture(scope="session")
def engine(engines):
    return engines[Variant.DISTILLED]


@pytest.fixture(scope="session")
def spec(engine):
    return engine.spec


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random RGB picture (noise alone would be an unfair test of resizing)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def cpu_generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


@pytest.fixture(scope="session")
def image_host():
    from local_hosts import ImageHost

    host = ImageHost()
    yield host
    host.close()


@pytest.fixture(scope="session")
def webhooks():
    from local_hosts import WebhookReceiver

    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def fal_server(checkpoints, tmp_path_factory):
    """One TLS server for the fal tests: 4B and Base 4B; image_urls and webhooks may reach 127.0.0.1."""
    from live_server import LiveServer, self_signed_certificate

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

LEVELS = ("unit", "engine", "live")
# In the code a test runs (its own, its fixtures', and the tests/ helpers they call, by name):
LIVE_CODE = re.compile(r'\bLiveServer\(|"-m",\s*"kleinserve"')  # a server, or the CLI, in a subprocess
ENGINE_CODE = re.compile(
    r"\b(Engine\.load|write_tiny_checkpoint|full_size\.build|bench_engine\.main)\(|\"tiny-checkpoint\""
)
ENGINE_FIXTURES = {"checkpoints", "engines", "engine", "spec"}  # each builds or loads the tiny model
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not any(item.get_closest_marker(level) for level in LEVELS):
            item.add_marker(pyramid_level(item))


def pyramid_level(item) -> str:
    functions = [getattr(item, "function", None)]
    for name in item.fixturenames:
        functions += [definition.func for definition in item._fixtureinfo.name2fixturedefs.get(name, ())]
    code = "\n".join(_code_reached(function) for function in functions if function is not None)
    if LIVE_CODE.search(code):
        return "live"
    if ENGINE_FIXTURES & set(item.fixturenames) or ENGINE_CODE.search(code):
        return "engine"
    return "unit"


@functools.cache
def _code_reached(function) -> str:
    """The source of a function defined under tests/, and of the tests/ functions it names (transitively)."""
    seen, pending, sources = set(), [inspect.unwrap(function)], []
    while pending:
        current = pending.pop()
        if current in seen or not _in_tests(current):
            continue
        seen.add(current)
        source = inspect.getsource(current)
        sources.append(source)
        namespace = current.__globals__
        for name in set(re.findall(r"[A-Za-z_]\w*", source)):
            named = namespace.get(name)
            if inspect.isfunction(named):
                pending.append(named)
    return "\n".join(sources)


def _in_tests(function) -> bool:
    try:
        return TESTS in Path(inspect.getsourcefile(function)).resolve().parents
    except (TypeError, OSError):
        return False
