"""The capacity benchmark's stand-in engine (kleinserve/simulated_engine.py, KLEINSERVE_SIMULATED_ENGINE_MS)
behind the real worker, job store and API: a fal queue job submitted to an API server is claimed by a
simulated worker through PostgreSQL, ends COMPLETED with a grey image of the requested size, and the worker
never loaded torch (which is what lets benchmarks/bench_capacity.py run dozens of workers on one machine)."""

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from kleinserve.simulated_engine import GREY

from support.fal_queue import result, status, submit, wait_until
from support.postgres_server import postgres_server  # noqa: F401 (fixture)
from support.scale_cluster import Cluster

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def simulated(postgres_server, tmp_path_factory):  # noqa: F811
    url = postgres_server.url(postgres_server.create_database())
    flags = ["--demo", "--no-warmup", "--batch-wait-ms", "0"]
    env = {"KLEINSERVE_SIMULATED_ENGINE_MS": "50"}
    cluster = Cluster(tmp_path_factory.mktemp("simulated"), url, workers=1, worker_flags=flags,
                      shared=["--no-safety-checker"], env=env)  # fmt: skip
    with cluster:
        yield cluster


def test_a_simulated_worker_completes_a_queued_job_without_torch(simulated):
    url = simulated.api.url
    job_id = submit(
        url,
        {
            "prompt": "grey",
            "image_size": {"width": 96, "height": 64},
            "num_inference_steps": 4,
            "sync_mode": True,
        },
    )
    wait_until(lambda: status(url, job_id)["status"] == "COMPLETED", 60)
    (image,) = result(url, job_id)["images"]
    if image["url"].startswith("data:"):
        data = base64.b64decode(image["url"].split(",", 1)[1])
    else:
        data = httpx.get(image["url"], timeout=30).content
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert pixels.shape == (64, 96, 3)
    assert (pixels == GREY).all()
    worker = simulated.workers[0]
    assert "SIMULATED ENGINE" in worker.log()
    assert "libtorch" not in Path(f"/proc/{worker.pid}/maps").read_text()
