"""Replicate's API (predictions, their stream and webhook, the model pages) driven by the unmodified
replicate-python client, `replicate.Client(base_url=..., api_token=...)`: run() (also with wait=1 on a job
that outlasts it), predictions create / get / wait / cancel / list, progress parsed from the logs, the signed
webhook validated with replicate's own validator and its events (webhook_events_filter: start, logs, output,
completed, in order), errors in Replicate's problem+json shape, another token's prediction not found, the
OpenAI route's pixels for the same seed and size, a -lora model's pixels equal to fal's /lora endpoint's, and
the Files API (create / get / list / delete, and run() uploading a local file input by default). (The npm
clients: tests/js/replicate.test.mjs and ai-replicate.test.mjs.)"""

import base64
import hashlib
import io
import threading

import httpx
import pytest
from PIL import Image

from kleinserve.models import Variant

from support.live_server import LiveServer
from support.lora_files import linear_shapes, write_peft_lora
from support.replicate_webhooks import webhook_events

replicate = pytest.importorskip("replicate")
from replicate.exceptions import ReplicateError  # noqa: E402

KEY, OTHER_KEY = "replicate-key", "replicate-other-key"
MODEL = "black-forest-labs/flux-2-klein-4b"
LORA_MODEL = f"{MODEL}-lora"
LORA_FILE = "style.safetensors"  # in the server's --lora-dir
SMALL = {"size": "64x64"}
SLOW = {
    "prompt": "slow",
    "output_megapixels": "0.25",
    "num_inference_steps": 8,
}  # @ai-sdk/replicate's size, also taken here: tiny images keep CI fast
# A job that holds the engine for many seconds (27 s on a fast 2-core machine) until the test cancels it: a
# test that needs "still running after N s" must not depend on how fast this machine runs SLOW.
HOLD = {**SLOW, "prompt": "hold", "output_megapixels": "4"}


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    lora_dir = tmp_path_factory.mktemp("replicate-loras")
    write_peft_lora(lora_dir / LORA_FILE, linear_shapes(checkpoints[Variant.DISTILLED]), seed=1)
    with LiveServer(
        tmp_path_factory.mktemp("replicate-server"),
        "--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",
        "--api-key", KEY, "--api-key", OTHER_KEY, "--no-warmup", "--batch-wait-ms", "0",
        "--allow-private-network", "127.0.0.1/32", "--webhook-attempts", "2", "--webhook-retry-base-s", "0.2",
        "--lora-dir", str(lora_dir),
    ) as live:  # fmt: skip
        yield live


@pytest.fixture(scope="module")
def client(server):
    return replicate.Client(api_token=KEY, base_url=server.url)


def download(url: str) -> Image.Image:
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 200
    return Image.open(io.BytesIO(answer.content))


def test_run_returns_file_outputs_of_replicates_size(client):
    [output] = client.run(MODEL, input={"prompt": "a red balloon", "output_megapixels": "0.25",
                                        "aspect_ratio": "1:1", "seed": 3})  # fmt: skip
    assert output.startswith("http://127.0.0.1") and "/files/" in output  # https URLs become FileOutput
    image = download(output)
    assert image.format == "JPEG" and image.size == (512, 512)


def test_run_with_wait_1_on_a_job_that_outlasts_it_still_returns_its_output(client):
    """A job held behind one that runs until cancelled 2 s later: a Prefer: wait=1 prediction is answered
    "starting" (whatever it is doing), which run() in both official clients takes as "poll on"."""
    ahead = client.predictions.create(model=MODEL, input=HOLD)
    blocked = client.predictions.create(model=MODEL, input={"prompt": "blocked", **SMALL}, wait=1)
    assert blocked.status == "starting" and blocked.output is None
    release = threading.Timer(2.0, ahead.cancel)  # after run()'s own wait of 1 s has ended
    release.start()
    try:
        [output] = client.run(MODEL, input={"prompt": "run", **SMALL, "output_format": "png"}, wait=1)
    finally:
        release.join()
    image = download(output)
    assert image.format == "PNG" and image.size == (64, 64)
    ahead.wait()
    assert ahead.status == "canceled"


def test_create_wait_progress_and_the_prediction_object(client, server):
    prediction = client.predictions.create(model=MODEL, input={"prompt": "a kite", **SMALL, "seed": 9})
    assert prediction.status in ("starting", "processing") and prediction.output is None
    prediction.wait()
    assert prediction.status == "succeeded" and prediction.error is None
    assert prediction.progress is not None
    assert (prediction.progress.current, prediction.progress.total, prediction.progress.percentage) == (
        4,
        4,
        1.0,
    )
    assert "100%|██████████| 4/4" in prediction.logs
    assert prediction.model == MODEL and len(prediction.version) == 64
    assert prediction.input == {"prompt": "a kite", "size": "64x64", "seed": 9}
    assert prediction.metrics["predict_time"] > 0
    assert prediction.created_at.endswith("Z") and prediction.completed_at >= prediction.started_at
    assert prediction.urls["get"] == f"{server.url}/v1/predictions/{prediction.id}"
    assert download(prediction.output[0]).size == (64, 64)
    assert client.predictions.get(prediction.id).output == prediction.output


def test_create_by_version_as_owner_name_id_and_as_a_bare_id(client):
    model = client.models.get(MODEL)
    version = model.latest_version.id
    for ref in (f"{MODEL}:{version}", version):
        prediction = client.predictions.create(version=ref, input={"prompt": "by version", **SMALL}, wait=30)
        assert prediction.status == "succeeded" and prediction.version == version
    [output] = client.run(f"{MODEL}:{version}", input={"prompt": "run by version", **SMALL})
    assert download(output).size == (64, 64)


def test_cancel_a_queued_prediction(client):
    first = client.predictions.create(model=MODEL, input=HOLD)
    second = client.predictions.create(model=MODEL, input={"prompt": "to cancel", **SMALL})
    second.cancel()
    second.reload()
    assert second.status == "canceled" and second.output is None
    first.cancel()
    first.wait()
    assert first.status == "canceled"


def test_list_pages_own_predictions_only(client, server):
    mine = client.predictions.create(model=MODEL, input={"prompt": "listed", **SMALL}, wait=30)
    page = client.predictions.list()
    assert mine.id in [p.id for p in page.results] and page.next is None and page.previous is None
    other = replicate.Client(api_token=OTHER_KEY, base_url=server.url)
    assert mine.id not in [p.id for p in other.predictions.list().results]
    with pytest.raises(ReplicateError) as raised:
        other.predictions.get(mine.id)
    assert raised.value.status == 404 and mine.id in raised.value.detail
    with pytest.raises(ReplicateError):
        other.predictions.cancel(mine.id)


def test_the_same_seed_gives_the_openai_routes_pixels(client, server):
    [output] = client.run(MODEL, input={"prompt": "a lighthouse", "size": "96x64", "seed": 42,
                                        "output_format": "png"})  # fmt: skip
    ours = download(output)
    openai = httpx.post(
        f"{server.url}/v1/images/generations",
        json={"model": "flux.2-klein-4b", "prompt": "a lighthouse", "size": "96x64", "seed": 42,
              "response_format": "b64_json"},
        headers={"authorization": f"Bearer {KEY}"}, timeout=120,
    )  # fmt: skip
    assert openai.status_code == 200, openai.text
    theirs = Image.open(io.BytesIO(base64.b64decode(openai.json()["data"][0]["b64_json"])))
    assert ours.format == "PNG" and ours.tobytes() == theirs.tobytes()


def test_the_webhook_is_signed_and_validates_with_replicates_validator(client, server, webhooks):
    webhook = replicate.webhook
    secret = client.webhooks.default.secret()
    prediction = client.predictions.create(model=MODEL, input={"prompt": "hooked", **SMALL},
                                           webhook=f"{webhooks.url}/replicate",
                                           webhook_events_filter=["completed"])  # fmt: skip
    [delivery] = webhooks.deliveries("replicate", at_least=1)
    assert delivery["id"] == prediction.id and delivery["status"] == "succeeded" and delivery["output"]
    [(headers, body)] = webhooks.raw["replicate"]
    webhook.Webhooks.validate(
        headers=headers, body=body.decode(), secret=secret, tolerance=60
    )  # raises if not
    with pytest.raises(webhook.InvalidSignatureError):
        webhook.Webhooks.validate(
            headers=headers, body=body.decode().replace("succeeded", "failed"), secret=secret
        )


def test_webhook_events_filter_start_and_completed_sends_exactly_those(client, webhooks):
    secret = client.webhooks.default.secret()
    prediction = client.predictions.create(model=MODEL, input={"prompt": "two events", **SMALL},
                                           webhook=f"{webhooks.url}/replicate-start",
                                           webhook_events_filter=["start", "completed"])  # fmt: skip
    events = webhook_events(webhooks, "replicate-start", prediction.id)
    assert [event for event, _ in events] == ["start", "completed"]
    (_, start), (_, completed) = events
    assert start["id"] == completed["id"] == prediction.id and start["started_at"] is not None
    assert completed["status"] == "succeeded" and completed["output"]
    for headers, body in webhooks.raw["replicate-start"]:
        replicate.webhook.Webhooks.validate(headers=headers, body=body.decode(), secret=secret, tolerance=60)
    assert client.predictions.get(prediction.id).status == "succeeded"


def test_the_default_filter_sends_start_logs_output_then_completed(client, webhooks):
    prediction = client.predictions.create(model=MODEL, input={"prompt": "every event", **SMALL, "seed": 4},
                                           webhook=f"{webhooks.url}/replicate-all")  # fmt: skip
    events = webhook_events(webhooks, "replicate-all", prediction.id)
    kinds = [event for event, _ in events]
    assert kinds[0] == "start" and kinds[-2:] == ["output", "completed"]
    assert set(kinds[1:-2]) == {"logs"}  # at least one logs event, none after output
    logs = [body["logs"] for event, body in events if event == "logs"]
    assert "4/4" in logs[-1] and all(body["id"] == prediction.id for _, body in events)
    (_, output), (_, completed) = events[-2:]
    assert output["output"] == completed["output"] and completed["status"] == "succeeded"
    prediction.wait()
    assert completed["output"] == prediction.output


def test_an_unknown_webhook_event_is_a_422_naming_the_filter(client, webhooks):
    with pytest.raises(ReplicateError) as raised:
        client.predictions.create(model=MODEL, input={"prompt": "a"}, webhook=f"{webhooks.url}/replicate-bad",
                                  webhook_events_filter=["start", "finished"])  # fmt: skip
    assert raised.value.status == 422 and raised.value.detail.startswith("- webhook_events_filter: ")
    assert "completed" in raised.value.detail


def test_the_stream_sends_logs_output_and_done(client):
    prediction = client.predictions.create(model=MODEL, input={"prompt": "streamed", **SMALL})
    events = list(prediction.stream())
    kinds = [event.event.value for event in events]
    assert kinds[-1] == "done" and "output" in kinds and "logs" in kinds
    [output] = [event.data for event in events if event.event.value == "output"]
    assert download(output).size == (64, 64)


@pytest.mark.parametrize(
    ("input", "field", "words"),
    [
        ({"prompt": 5}, "input.prompt", "string"),
        ({"prompt": "a", "seed": "7"}, "input.seed", "integer"),
        ({"prompt": "a", "aspect_ratio": "7:5"}, "input.aspect_ratio", "match_input_image"),
        ({"prompt": "a", "output_megapixels": "7"}, "input.output_megapixels", "0.25"),
        ({"prompt": "a", "images": ["https://example.com/a.png"] * 5}, "input.images", "at most 4"),
        ({"prompt": "a", "guidance": 3.5}, "input.guidance", "distilled"),
        ({"prompt": "a", "output_format": "gif"}, "input.output_format", "jpg"),
        ({"prompt": "a", "size": "100x64"}, "input.size", "multiple of 16"),
        ({"prompt": "a", "lora_weights": LORA_FILE}, "input.lora_weights", f"run {LORA_MODEL}"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(client, input, field, words):
    with pytest.raises(ReplicateError) as raised:
        client.predictions.create(model=MODEL, input=input)
    error = raised.value
    assert error.status == 422 and error.title == "Input validation failed"
    assert error.detail.startswith(f"- {field}: ") and words in error.detail


def test_a_lora_model_gives_the_fal_lora_endpoints_pixels(client, server):
    """black-forest-labs/flux-2-klein-4b-lora with lora_weights + lora_scale equals fal's /lora endpoint with
    the same LoRA, seed and input; the same prediction on the plain model differs."""
    given = {"prompt": "a lora'd lighthouse", "seed": 21, **SMALL, "output_format": "png"}
    [output] = client.run(LORA_MODEL, input={**given, "lora_weights": LORA_FILE, "lora_scale": 0.5})
    ours = download(output)
    fal_input = {"prompt": given["prompt"], "seed": 21, "image_size": {"width": 64, "height": 64},
                 "output_format": "png", "loras": [{"path": LORA_FILE, "scale": 0.5}]}  # fmt: skip
    fal = httpx.post(f"{server.url}/fal-ai/flux-2/klein/4b/lora", json=fal_input,
                     headers={"authorization": f"Key {KEY}"}, timeout=120)  # fmt: skip
    assert fal.status_code == 200, fal.text
    theirs = download(fal.json()["images"][0]["url"])
    assert ours.format == "PNG" and ours.tobytes() == theirs.tobytes()
    [plain] = client.run(MODEL, input=given)
    assert download(plain).tobytes() != ours.tobytes()
    assert client.models.get(LORA_MODEL).latest_version.openapi_schema["components"]["schemas"]["Input"][
        "properties"
    ].keys() >= {"lora_weights", "lora_scale"}


@pytest.mark.parametrize(
    ("input", "field", "words"),
    [
        ({"lora_weights": "missing.safetensors"}, "input.lora_weights", "missing.safetensors"),
        ({"lora_weights": LORA_FILE, "lora_scale": 5}, "input.lora_scale", "from 0 to 4"),
        ({"lora_scale": 0.5}, "input.lora_scale", "lora_weights"),
    ],
)
def test_a_bad_lora_is_a_422_naming_its_field(client, input, field, words):
    with pytest.raises(ReplicateError) as raised:
        client.predictions.create(model=LORA_MODEL, input={"prompt": "a", **SMALL, **input})
    assert raised.value.status == 422 and raised.value.detail.startswith(f"- {field}: ")
    assert words in raised.value.detail


def test_a_webhook_to_a_private_address_is_refused(client):
    with pytest.raises(ReplicateError) as raised:
        client.predictions.create(model=MODEL, input={"prompt": "a"}, webhook="http://10.0.0.1/hook")
    assert raised.value.status == 422 and raised.value.detail.startswith("- webhook: ")


def test_unknown_and_unserved_models_are_404s_naming_what_is_served(client, server):
    for model in ("black-forest-labs/flux-2-klein-9b", "black-forest-labs/flux-2-pro", "someone/else"):
        with pytest.raises(ReplicateError) as raised:
            client.predictions.create(model=model, input={"prompt": "a"})
        assert raised.value.status == 404 and MODEL in raised.value.detail
    answer = httpx.post(f"{server.url}/v1/predictions", json={"version": "0" * 64, "input": {"prompt": "a"}},
                        headers={"authorization": f"Bearer {KEY}"})  # fmt: skip
    assert answer.status_code == 404 and answer.json()["title"] == "Not Found"
    assert httpx.get(f"{server.url}/v1/predictions").json()["status"] == 401


def test_an_edit_with_match_input_image_takes_the_first_references_aspect(client, image_host):
    images = [f"{image_host.url}/a.png", f"{image_host.url}/b.jpg"]  # a.png is 160x128 (5:4)
    body = {"prompt": "the two in snow", "images": images, "aspect_ratio": "match_input_image",
            "output_megapixels": "0.25", "output_format": "webp"}  # fmt: skip
    [output] = client.run(MODEL, input=body)
    image = download(output)
    assert image.format == "WEBP" and image.size == (560, 448)  # 0.25 MP at 5:4, floored to multiples of 16


def test_files_create_get_list_delete_and_another_tokens_file_is_not_found(
    client, server, image_host, tmp_path
):
    path = tmp_path / "fox.png"
    path.write_bytes(image_host.files["a.png"])
    created = client.files.create(path, metadata={"purpose": "reference"})
    data = image_host.files["a.png"]
    assert (created.name, created.content_type, created.size) == ("fox.png", "image/png", len(data))
    assert created.checksums == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
    }
    assert created.metadata == {"purpose": "reference"} and created.expires_at > created.created_at
    assert client.files.get(created.id) == created and created.id in [f.id for f in client.files.list()]
    fetched = httpx.get(created.urls["get"], headers={"authorization": f"Bearer {KEY}"})
    assert (
        fetched.status_code == 200
        and fetched.content == data
        and fetched.headers["content-type"] == "image/png"
    )
    other = replicate.Client(api_token=OTHER_KEY, base_url=server.url)
    with pytest.raises(ReplicateError) as unknown:
        other.files.get(created.id)
    assert unknown.value.status == 404 and created.id not in [f.id for f in other.files.list()]
    assert httpx.get(created.urls["get"], headers={"authorization": f"Bearer {OTHER_KEY}"}).status_code == 404
    with pytest.raises(ReplicateError) as refused:  # its urls.get names another token's file
        other.run(MODEL, input={"prompt": "x", "images": [created.urls["get"]], **SMALL})
    assert refused.value.status == 422 and "input.images[0]" in str(refused.value)
    client.files.delete(created.id)
    with pytest.raises(ReplicateError) as deleted:
        client.files.get(created.id)
    assert deleted.value.status == 404


def test_the_npm_clients_upload_form_with_metadata_as_a_json_blob(server, image_host):
    files = {"content": ("blob_1", image_host.files["b.jpg"], "application/octet-stream"),
             "metadata": ("blob", b'{"from": "node"}', "application/json")}  # fmt: skip
    answer = httpx.post(f"{server.url}/v1/files", files=files, headers={"authorization": f"Bearer {KEY}"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["metadata"] == {"from": "node"} and answer.json()["content_type"] == "image/jpeg"


def test_an_upload_that_is_not_an_image_is_refused_naming_content(client):
    with pytest.raises(ReplicateError) as refused:
        client.files.create(io.BytesIO(b"import os\n"), filename="script.py")
    assert refused.value.status == 422 and "content" in str(refused.value)


def test_a_local_file_input_is_uploaded_and_gives_the_data_urls_pixels(client, image_host, tmp_path):
    """run()'s default file_encoding_strategy ("url") uploads the file (POST /v1/files) and sends its
    urls.get, which this server reads locally by id and owner: the same image as the same input inline."""
    path = tmp_path / "reference.png"
    path.write_bytes(image_host.files["a.png"])
    body = {"prompt": "in snow", **SMALL, "seed": 5, "output_format": "png"}
    with path.open("rb") as reference:
        [uploaded] = client.run(MODEL, input={**body, "images": [reference]})
    inline = "data:image/png;base64," + base64.b64encode(image_host.files["a.png"]).decode()
    [direct] = client.run(MODEL, input={**body, "images": [inline]})
    assert download(uploaded).tobytes() == download(direct).tobytes()


def test_cancel_after_cancels_a_prediction_still_unfinished(server):
    headers = {"authorization": f"Bearer {KEY}"}
    url = f"{server.url}/v1/models/{MODEL}/predictions"
    ahead = httpx.post(url, json={"input": HOLD}, headers=headers).json()  # runs until cancelled below
    capped = httpx.post(url, json={"input": {"prompt": "capped", **SMALL}},
                        headers={**headers, "Cancel-After": "1s"}).json()  # fmt: skip
    client = replicate.Client(api_token=KEY, base_url=server.url)
    waited = client.predictions.get(capped["id"])
    waited.wait()
    assert waited.status == "canceled"
    assert client.predictions.get(ahead["id"]).status == "processing"  # the header capped that one only
    client.predictions.cancel(ahead["id"])
    held = client.predictions.get(ahead["id"])
    held.wait()
    assert held.status == "canceled"
    refused = httpx.post(url, json={"input": SLOW}, headers={**headers, "Cancel-After": "soon"})
    assert refused.status_code == 400 and "Cancel-After" in refused.json()["detail"]
