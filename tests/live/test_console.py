"""The playground at `/`, driven in Debian's Chromium against a live server: a generation shows each step's
preview and then the image; an edit takes two uploaded references; a bad field's error appears at the field;
LoRAs picked from the server's list or named go to fal's /lora endpoint, each bad one's error at its row;
"Copy code" gives commands that, run as copied, save an image (the same one, LoRAs included); with
--api-key the page asks for the key.

Every test ends with the page's console free of errors (`page.errors.check()`); where a test makes the
server refuse a request on purpose, the one network error that refusal logs is expected and removed first.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from kleinserve.models import Variant

from support.browser import chromium, open_page
from support.live_server import LiveServer
from support.lora_files import linear_shapes, write_peft_lora
from support.node_packages import JS_DIR, installed_node_modules

KEY = "console-test-key"

# Records, in order, each step the page reports (data-steps-seen on the previews counts them; the page resets
# it to 0 as a job starts) and each result shown. One observer sees both, so its records keep their order.
RECORD_ORDER = """() => {
  window.seen = [];
  let reset = true;
  const observer = new MutationObserver((changes) => changes.forEach((change) => {
    if (change.type === "childList") change.addedNodes.forEach(() => window.seen.push("result"));
    else if (reset) reset = false;
    else window.seen.push("step " + (Number(change.oldValue) + 1));
  }));
  observer.observe(document.getElementById("previews"),
    {attributes: true, attributeOldValue: true, attributeFilter: ["data-steps-seen"]});
  observer.observe(document.getElementById("result-list"), {childList: true});
}"""
LOADED_SIZES = """(region) => [...region.querySelectorAll("img")].map(
  (img) => img.complete && img.naturalWidth ? [img.naturalWidth, img.naturalHeight] : null)"""


@pytest.fixture(scope="module")
def lora_dir(checkpoints, tmp_path_factory):
    """LoRAs for the demo model (the tiny distilled checkpoint): one in a sub-folder, one at the top."""
    folder = tmp_path_factory.mktemp("console-loras")
    (folder / "styles").mkdir()
    shapes = linear_shapes(checkpoints[Variant.DISTILLED])
    write_peft_lora(folder / "styles" / "ink.safetensors", shapes, seed=1, strength=0.8)
    write_peft_lora(folder / "grain.safetensors", shapes, seed=2, strength=0.8)
    return folder


@pytest.fixture(scope="module")
def server(checkpoints, lora_dir, tmp_path_factory):
    base = f"flux.2-klein-base-4b={checkpoints[Variant.BASE]}"
    data = tmp_path_factory.mktemp("console") / "data"
    with LiveServer(data, "--demo", "--model", base, "--no-warmup", "--lora-dir", str(lora_dir)) as live:
        yield live


@pytest.fixture(scope="module")
def node_modules():
    return installed_node_modules()


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def ready_page(browser, url: str, **options):
    page = open_page(browser, url, **options)
    page.wait_for_selector("body[data-ready]", state="attached")
    return page


def fill_request(page, prompt: str, width: int | None, height: int | None, model="flux.2-klein-4b") -> None:
    page.get_by_label("Model").select_option(model)
    page.get_by_label("Prompt", exact=True).fill(prompt)
    if width is not None:
        page.get_by_label("Size").select_option("custom")
        page.get_by_label("Width").fill(str(width))
        page.get_by_label("Height").fill(str(height))


def result_sizes(page, count: int) -> list:
    results = page.get_by_role("region", name="Results")
    results.locator("img").nth(count - 1).wait_for()
    page.wait_for_function(
        f"(region) => ({LOADED_SIZES})(region).every(Boolean)", arg=results.element_handle()
    )
    return results.evaluate(LOADED_SIZES)


def expect_refusal(page, status: int) -> None:
    """The browser logs the one refused request as a console error: that one is this test's outcome."""
    refused = [error for error in page.errors if f"status of {status}" in error]
    assert len(refused) == 1, page.errors
    page.errors.remove(refused[0])


def test_a_generation_shows_each_step_preview_and_then_the_image(server, browser):
    page = ready_page(browser, server.url + "/")
    fill_request(page, "a lighthouse at dusk", 256, 192)
    page.evaluate(RECORD_ORDER)
    page.get_by_role("button", name="Generate").click()

    assert result_sizes(page, 1) == [[256, 192]]
    assert page.evaluate("window.seen") == ["step 1", "step 2", "step 3", "step 4", "result"]
    assert page.locator("#previews img").get_attribute("data-step") == "4"
    assert page.locator("#progress").evaluate("bar => bar.value") == 1
    caption = page.get_by_role("region", name="Results").locator("figcaption").inner_text()
    seed = int(re.search(r"seed (\d+)", caption).group(1))
    assert "256\u00d7192" in caption and "inference" in caption
    download = page.get_by_role("link", name="Download")
    assert httpx.get(download.get_attribute("href")).content[:8] == b"\x89PNG\r\n\x1a\n"

    # history: the job is listed; "Run again" repeats it with the same seed, which gives the same image
    history = page.locator("#history-list li")
    assert history.count() == 1 and f"seed {seed}" in history.inner_text()
    first_url = download.get_attribute("href")
    history.get_by_role("button", name="Run again").click()
    page.wait_for_function("() => document.querySelectorAll('#history-list li').length === 2")
    assert page.get_by_label("Seed", exact=True).input_value() == str(seed)
    second_url = page.get_by_role("link", name="Download").get_attribute("href")
    assert second_url != first_url
    assert httpx.get(second_url).content == httpx.get(first_url).content
    page.errors.check()


def test_an_edit_takes_two_uploaded_references(server, browser, tmp_path):
    page = ready_page(browser, server.url + "/")
    fill_request(page, "the same scene in snow", None, None)
    first, second = png(160, 96, (200, 40, 40)), png(96, 128, (40, 40, 200))
    page.get_by_label("Add reference images").set_input_files(
        [{"name": "first.png", "mimeType": "image/png", "buffer": first}]
    )
    drop = page.evaluate_handle(
        """(bytes) => { const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(bytes)], "second.png", {type: "image/png"}));
            return data; }""",
        list(second),
    )
    page.locator("#drop-zone").dispatch_event("drop", {"dataTransfer": drop})
    page.get_by_role("button", name="Remove second.png").wait_for()
    # a third, removed again: thumbnails come and go
    page.get_by_label("Add reference images").set_input_files(
        [{"name": "third.png", "mimeType": "image/png", "buffer": png(64, 64, (0, 0, 0))}]
    )
    page.get_by_role("button", name="Remove third.png").click()
    assert page.locator("#thumbnails img").count() == 2
    assert page.get_by_label("Size").input_value() == "auto"

    page.get_by_role("button", name="Generate").click()
    assert result_sizes(page, 1) == [[160, 96]]  # an edit takes its first reference's size
    page.get_by_role("tab", name="curl").click()
    code = page.locator("#code-text").inner_text()
    assert "/edit" in code and "first.png" in code and "second.png" in code
    (tmp_path / "first.png").write_bytes(first)
    (tmp_path / "second.png").write_bytes(second)
    run_snippet(["bash", "-c", code], tmp_path)
    assert saved_image_sizes(tmp_path, exclude={"first.png", "second.png"}) == [(160, 96)]
    page.get_by_role("tab", name="BFL API").click()  # the same edit through BFL's API
    code = page.locator("#code-text").inner_text()
    assert "input_image_2" in code and "second.png" in code
    for made in set(tmp_path.glob("*.png")) - {tmp_path / "first.png", tmp_path / "second.png"}:
        made.unlink()
    run_snippet(["bash", "-c", code], tmp_path)
    assert saved_image_sizes(tmp_path, exclude={"first.png", "second.png"}) == [(160, 96)]
    page.errors.check()


def test_a_bad_field_shows_its_error_at_the_field(server, browser):
    page = ready_page(browser, server.url + "/")
    fill_request(page, "a lighthouse", 128, 128)
    steps = page.get_by_label("Steps")
    steps.fill("20")  # the distilled model takes 4 to 8
    page.get_by_role("button", name="Generate").click()

    error = page.locator("#steps-error")
    error.wait_for()
    assert "20" in error.inner_text() and "8" in error.inner_text()
    assert steps.get_attribute("aria-invalid") == "true"
    assert "steps-error" in steps.get_attribute("aria-describedby")
    assert page.locator("#form-error").is_hidden()
    expect_refusal(page, 422)

    steps.fill("4")  # fixed: the error goes, the image comes
    page.get_by_role("button", name="Generate").click()
    assert result_sizes(page, 1) == [[128, 128]]
    assert error.is_hidden() and steps.get_attribute("aria-invalid") is None
    page.errors.check()


def test_base_models_offer_guidance_and_a_negative_prompt(server, browser):
    page = ready_page(browser, server.url + "/")
    page.get_by_label("Model").select_option("flux.2-klein-4b")
    assert page.get_by_label("Guidance").is_hidden() and page.get_by_label("Negative prompt").is_hidden()
    fill_request(page, "a lighthouse", 64, 64, model="flux.2-klein-base-4b")
    assert page.get_by_label("Steps").input_value() == "50"
    page.get_by_label("Guidance").fill("3.5")
    page.get_by_label("Negative prompt").fill("fog")
    page.get_by_label("Steps").fill("4")  # the console sends through fal: Base takes 4..50 steps there
    page.get_by_role("button", name="Generate").click()
    assert result_sizes(page, 1) == [[64, 64]]
    code = page.locator("#code-text").inner_text()
    assert '"guidance_scale":3.5' in code and '"negative_prompt":"fog"' in code
    page.errors.check()


def run_snippet(command: list[str], cwd: Path, env: dict | None = None) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def saved_image_sizes(directory: Path, exclude=frozenset()) -> list[tuple[int, int]]:
    files = sorted(p for p in directory.iterdir() if p.suffix == ".png" and p.name not in exclude)
    sizes = []
    for path in files:
        with Image.open(path) as image:
            image.load()
            sizes.append(image.size)
    return sizes


@pytest.mark.parametrize(
    ("tab", "command"),
    [
        ("curl", ["bash", "-c"]),
        ("Python (openai)", [sys.executable, "-c"]),
        ("JavaScript", None),
        ("BFL API", ["bash", "-c"]),
        ("Python (replicate)", [sys.executable, "-c"]),
        ("AI Gateway (JS)", None),
    ],
)
def test_copied_code_runs_and_saves_the_image(server, browser, tmp_path, tab, command, request):
    page = ready_page(browser, server.url + "/", permissions=["clipboard-read", "clipboard-write"])
    fill_request(page, 'a lighthouse\'s beam, "quoted" and $HOME `untouched`', 96, 64)
    page.get_by_label("Random seed").uncheck()
    page.get_by_label("Seed", exact=True).fill("7")
    page.get_by_role("tab", name=tab).click()
    page.get_by_role("button", name="Copy code").click()
    page.get_by_text("Copied.").wait_for()
    code = page.evaluate("navigator.clipboard.readText()")
    assert code == page.locator("#code-text").inner_text()
    if tab == "AI Gateway (JS)":
        request.getfixturevalue("node_modules")  # the snippet imports `ai`
    run_copied(code, command, tmp_path)
    assert saved_image_sizes(tmp_path) == [(96, 64)]
    page.errors.check()


def run_copied(code: str, command: list[str] | None, directory: Path) -> None:
    """A copied snippet run in `directory`; a JavaScript one (command None) as a module beside tests/js's
    node_modules, so its imports resolve (it writes its images into `directory`, its working directory)."""
    if command is not None:
        run_snippet([*command, code], directory)
        return
    script = JS_DIR / f".console-{directory.name}.mjs"
    script.write_text(code)
    try:
        run_snippet(["node", str(script)], directory)
    finally:
        script.unlink()


def test_with_api_keys_the_page_asks_for_the_key(browser, tmp_path):
    with LiveServer(tmp_path / "data", "--demo", "--api-key", KEY, "--no-warmup") as server:
        config = httpx.get(server.url + "/console/config.json").json()
        assert config["api_key_required"] is True and KEY not in json.dumps(config)
        page = ready_page(browser, server.url + "/")
        key_field = page.get_by_label("API key")
        assert key_field.is_visible()
        usage = page.locator("#usage")
        usage.locator("summary").click()  # without a key, usage is not asked for: the panel says why
        expect(page.locator("#usage-status")).to_contain_text("API key")  # set by the (queued) toggle event
        usage.locator("summary").click()
        fill_request(page, "a lighthouse", 64, 64)
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#api-key-error")).to_contain_text("API key")  # asked, nothing sent
        expect(key_field).to_have_attribute("aria-invalid", "true")

        key_field.fill(KEY)
        page.get_by_role("button", name="Generate").click()
        assert result_sizes(page, 1) == [[64, 64]]
        assert page.evaluate("sessionStorage.getItem('kleinserve.apiKey')") == KEY
        assert KEY not in page.evaluate("JSON.stringify(localStorage)")
        assert "$KLEINSERVE_API_KEY" in page.locator("#code-text").inner_text() and KEY not in page.content()
        usage.locator("summary").click()  # with the key: this key's usage, one request of one image
        page.locator("#usage-table tbody tr").wait_for()
        row = page.locator("#usage-table tbody tr").inner_text()
        assert "flux.2-klein-4b" in row
        totals = page.locator("#usage-table tfoot").inner_text().split("\t")
        headers = page.locator("#usage-table thead").inner_text().split("\t")
        assert totals[headers.index("requests")].strip() == "1"

        # a reload in the same tab keeps the key; a new tab (session) does not have it
        page.reload()
        page.wait_for_selector("body[data-ready]", state="attached")
        assert page.get_by_label("API key").input_value() == KEY
        page.errors.check()
        other = ready_page(browser, server.url + "/")
        assert other.get_by_label("API key").input_value() == ""
        other.errors.check()


def test_console_files_load_without_a_key_under_a_strict_policy(tmp_path):
    with LiveServer(tmp_path / "data", "--demo", "--api-key", KEY, "--no-warmup") as server:
        for path in ("/", "/console/playground.js", "/console/console.css", "/console/config.json"):
            answer = httpx.get(server.url + path)
            assert answer.status_code == 200, path
            assert "default-src 'none'" in answer.headers["content-security-policy"]
        assert (
            httpx.get(server.url + "/console/playground.js")
            .headers["content-type"]
            .startswith("text/javascript")
        )
        refused = ("/console/..%2Fapp.py", "/console/.x.js", "/console/console.py", "/console/nothing.js")
        for path in refused:
            assert httpx.get(server.url + path).status_code == 404, path
        assert httpx.get(server.url + "/v1/models").status_code == 401  # the API itself still needs the key
        schema = httpx.get(server.url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert not [path for path in schema["paths"] if path == "/" or path.startswith("/console")]


def test_copied_fal_client_code_runs_against_a_tls_server(fal_server, browser, tmp_path):
    """fal-client speaks only https: the page served over TLS gives a snippet that points it at itself."""
    page = ready_page(browser, fal_server.url + "/", ignore_https_errors=True)
    fill_request(page, "a lighthouse", 64, 96)
    page.get_by_role("tab", name="Python (fal-client)").click()
    code = page.locator("#code-text").inner_text()
    assert f"127.0.0.1:{fal_server.port}/queue" in code
    hosts = ("FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST", "FAL_KEY")  # the snippet sets these itself
    env = {name: value for name, value in os.environ.items() if name not in hosts}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**env, "SSL_CERT_FILE": fal_server.certificate})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert saved_image_sizes(tmp_path) == [(64, 96)]
    page.errors.check()


def add_lora(page, path: str = "", pick: str | None = None, scale: str | None = None) -> None:
    """One more LoRA row: a file picked from the server's list, or a path typed in; a scale if given."""
    page.get_by_role("button", name="Add LoRA").click()
    number = page.locator("#lora-rows li").count()
    if pick is not None:
        page.get_by_label(f"LoRA {number} from the server").select_option(pick)
    else:
        page.get_by_label(f"LoRA {number} path").fill(path)
    if scale is not None:
        page.get_by_label(f"LoRA {number} scale").fill(scale)


def fix_seed(page, seed: int) -> None:
    page.get_by_label("Random seed").uncheck()
    page.get_by_label("Seed", exact=True).fill(str(seed))


def pixels(source: str | Path) -> np.ndarray:
    data = source.read_bytes() if isinstance(source, Path) else httpx.get(source, timeout=30).content
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def shown_image(page) -> np.ndarray:
    result_sizes(page, 1)
    return pixels(page.get_by_role("link", name="Download").get_attribute("href"))


def fal_image(server, endpoint: str, body: dict) -> np.ndarray:
    answer = httpx.post(f"{server.url}/{endpoint}", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return pixels(answer.json()["images"][0]["url"])


def test_loras_from_the_list_and_by_name_run_as_fals_lora_endpoint(server, browser):
    page = ready_page(browser, server.url + "/")
    fill_request(page, "a lighthouse", 96, 64)
    fix_seed(page, 5)
    expect(page.locator("#lora-files-status")).to_contain_text("2 LoRA file(s)")  # GET /v1/loras
    add_lora(page, pick="styles/ink.safetensors", scale="0.8")
    add_lora(page, path="grain.safetensors", scale="1.5")  # a --lora-dir file by name
    assert page.get_by_label("LoRA 1 path").input_value() == "styles/ink.safetensors"
    page.get_by_role("button", name="Generate").click()
    shown = shown_image(page)

    loras = [{"path": "styles/ink.safetensors", "scale": 0.8}, {"path": "grain.safetensors", "scale": 1.5}]
    [job] = httpx.get(server.url + "/v1/jobs", params={"limit": 1}).json()["data"]
    assert job["params"]["loras"] == loras
    body = {"prompt": "a lighthouse", "image_size": {"width": 96, "height": 64}, "seed": 5}
    assert np.array_equal(shown, fal_image(server, "fal-ai/flux-2/klein/4b/lora", {**body, "loras": loras}))
    assert not np.array_equal(shown, fal_image(server, "fal-ai/flux-2/klein/4b", body))  # the LoRAs count

    # the history keeps them: with the rows removed, "Run again" brings them back and the same image
    for _ in loras:
        page.get_by_role("button", name="Remove LoRA 1").click()
    assert page.locator("#lora-rows li").count() == 0
    page.locator("#history-list li").first.get_by_role("button", name="Run again").click()
    page.wait_for_function("() => document.querySelectorAll('#history-list li').length === 2")
    assert page.get_by_label("LoRA 1 path").input_value() == "styles/ink.safetensors"
    assert page.get_by_label("LoRA 2 path").input_value() == "grain.safetensors"
    assert page.get_by_label("LoRA 2 scale").input_value() == "1.5"
    assert "2 LoRA(s)" in page.locator("#history-list li").first.inner_text()
    assert np.array_equal(shown_image(page), shown)
    page.errors.check()


def test_a_bad_lora_shows_its_error_next_to_its_row(server, browser):
    page = ready_page(browser, server.url + "/")
    fill_request(page, "a lighthouse", 64, 64)
    add_lora(page, path="grain.safetensors")
    add_lora(page)  # left blank: not sent, so the server's loras[1] is the third row
    add_lora(page, path="missing.safetensors")
    page.get_by_role("button", name="Generate").click()

    error = page.locator("#lora-2-error")
    error.wait_for()
    assert "missing.safetensors" in error.inner_text() and "--lora-dir" in error.inner_text()
    assert page.get_by_label("LoRA 3 path").get_attribute("aria-invalid") == "true"
    assert page.locator("#lora-0-error").is_hidden() and page.locator("#lora-1-error").is_hidden()
    assert page.locator("#form-error").is_hidden()
    expect_refusal(page, 422)

    page.get_by_role("button", name="Remove LoRA 3").click()  # fixed: the error goes, the image comes
    page.get_by_role("button", name="Generate").click()
    assert result_sizes(page, 1) == [[64, 64]]
    assert page.locator("#lora-rows .field-error:not([hidden])").count() == 0
    page.errors.check()


def test_copied_code_with_a_lora_gives_the_same_image(server, browser, tmp_path):
    page = ready_page(browser, server.url + "/")
    fill_request(page, "a lighthouse", 96, 64)
    fix_seed(page, 11)
    add_lora(page, pick="styles/ink.safetensors", scale="0.6")
    page.get_by_role("button", name="Generate").click()
    shown = shown_image(page)
    runs = (("curl", ["bash", "-c"]), ("Python (openai)", [sys.executable, "-c"]), ("JavaScript", None))
    for index, (tab, command) in enumerate(runs):
        page.get_by_role("tab", name=tab).click()
        code = page.locator("#code-text").inner_text()
        assert "styles/ink.safetensors" in code, tab
        folder = tmp_path / f"run-{index}"
        folder.mkdir()
        run_copied(code, command, folder)
        [saved] = folder.glob("*.png")
        assert np.array_equal(pixels(saved), shown), tab
    for tab in ("BFL API", "Python (replicate)", "AI Gateway (JS)"):  # these dialects take no LoRAs: said
        page.get_by_role("tab", name=tab).click()
        expect(page.locator("#code-note")).to_contain_text("takes no LoRAs")
        assert "ink.safetensors" not in page.locator("#code-text").inner_text()

    # an edit: openai-python sends multipart, where the LoRAs go as JSON text
    reference = png(96, 64, (200, 40, 40))
    page.get_by_label("Add reference images").set_input_files(
        [{"name": "first.png", "mimeType": "image/png", "buffer": reference}]
    )
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("() => document.querySelectorAll('#history-list li').length === 2")  # shown
    shown = shown_image(page)
    page.get_by_role("tab", name="Python (openai)").click()
    code = page.locator("#code-text").inner_text()
    assert "images.edit(" in code and "ink.safetensors" in code
    folder = tmp_path / "edit"
    folder.mkdir()
    (folder / "first.png").write_bytes(reference)
    run_snippet([sys.executable, "-c", code], folder)
    assert np.array_equal(pixels(folder / "image-0.png"), shown)
    page.errors.check()
