"""The safety checker: a real transformers classifier (tiny, random weights), forced to flag with threshold 0,
on a real server; flagged images are black, flagged, and never stored; disabling it lets images pass."""

import base64
import io
import time

import httpx
import numpy as np
import openai
from PIL import Image

from kleinserve.models import Variant

from support.live_server import LiveServer
from support.zygote import Finished, run_kleinserve


def serve(*args: str) -> Finished:
    return run_kleinserve(["serve", *args])


def test_the_server_refuses_to_start_without_its_classifier_unless_disabled(checkpoints, tmp_path):
    model = ("--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}", "--data-dir", str(tmp_path))
    missing = serve(*model, "--safety-model", "some-org/not-in-the-cache")
    assert missing.returncode != 0 and "--no-safety-checker" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    with LiveServer(
        tmp_path / "off", *model[:2], "--no-safety-checker", "--safety-model", "nowhere"
    ) as server:
        response = httpx.post(
            server.url + "/fal-ai/flux-2/klein/4b", json={"prompt": "x", "image_size": "square"}, timeout=120
        )
        assert response.status_code == 200 and response.json()["has_nsfw_concepts"] == [False]


def test_flagged_images_are_black_flagged_and_never_stored(checkpoints, tmp_path):
    flags = ["--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}", "--safety-threshold", "0",
             "--safety-check-openai"]  # fmt: skip
    with LiveServer(tmp_path, *flags) as server:
        fal_url = server.url + "/fal-ai/flux-2/klein/4b"
        size = {"width": 96, "height": 64}
        flagged = httpx.post(
            fal_url, json={"prompt": "x", "image_size": size, "num_images": 2}, timeout=60
        ).json()
        assert flagged["has_nsfw_concepts"] == [True, True]
        for image in flagged["images"]:
            assert image["url"].startswith("data:image/png;base64,")
            pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(image["url"].split(",", 1)[1]))))
            assert pixels.shape == (64, 96, 3) and not pixels.any()
        queued = httpx.post(
            server.url + "/queue/fal-ai/flux-2/klein/4b", json={"prompt": "x", "image_size": size}
        )
        status_url = queued.json()["status_url"]
        while httpx.get(status_url).json()["status"] != "COMPLETED":
            time.sleep(0.05)
        result = httpx.get(queued.json()["response_url"]).json()
        assert result["has_nsfw_concepts"] == [True] and result["images"][0]["url"].startswith(
            "data:image/png"
        )
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
        openai_result = client.images.generate(prompt="x", size="64x64")
        assert openai_result.model_extra["has_nsfw_concepts"] == [True]
        assert not list((tmp_path / "files").glob("*/*"))  # nothing flagged was written

        passed = httpx.post(fal_url, json={"prompt": "x", "image_size": size, "enable_safety_checker": False},
                            timeout=120)
        image = passed.json()["images"][0]
        assert passed.json()["has_nsfw_concepts"] == [False] and image["url"].startswith(
            server.url + "/files/"
        )
        assert np.asarray(Image.open(io.BytesIO(httpx.get(image["url"]).content))).any()
