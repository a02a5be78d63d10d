"""The status page (/status) in Debian's Chromium: it shows, per served model, the requests just made (from
/v1/stats), a latency chart per window, and asks for the API key where the server needs one."""

import re

import httpx
import pytest

from kleinserve.models import Variant

from support.browser import chromium, open_page
from support.live_server import LiveServer

MODEL, OTHER = "flux.2-klein-4b", "flux.2-klein-base-4b"


def test_the_status_page_shows_the_requests_just_made(checkpoints, tmp_path):
    flags = ["--model", f"{MODEL}={checkpoints[Variant.DISTILLED]}",
             "--model", f"{OTHER}={checkpoints[Variant.BASE]}", "--no-warmup"]  # fmt: skip
    with LiveServer(tmp_path, *flags) as server, chromium() as browser:
        images = [generate(server, {"prompt": "a fox", "size": "64x64", "n": n}) for n in (1, 2)]
        rejected = httpx.post(f"{server.url}/v1/images/generations", json={"model": MODEL, "size": "64x64"})
        assert rejected.status_code == 400  # no prompt: counted as rejected, not against the success rate
        page = open_page(browser, server.url + "/status", viewport={"width": 1200, "height": 900})

        mine = model_section(page, MODEL)
        hour = row(mine, "Last hour")
        assert hour["Requests"] == "3" and hour["Rejected"] == "1" and hour["Failed"] == "0"
        assert hour["Success rate"] == "100%" and hour["Queue depth"] == "0"
        assert float(hour["Images/s"]) == pytest.approx(sum(images) / 3600, rel=0.01)
        assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", hour["Latency p95"])
        assert row(mine, "Last day")["Requests"] == "3"
        chart = mine.get_by_role("img", name=re.compile("Latency of flux.2-klein-4b, last hour"))
        assert chart.locator("circle").count() >= 2  # a p50 and a p95 point where the requests were

        other = model_section(page, OTHER)  # served, never asked
        assert row(other, "Last hour")["Requests"] == "0" and row(other, "Last hour")["Success rate"] == "—"
        empty = other.get_by_role("img", name=re.compile("last day"))
        assert empty.get_by_text("no successful requests").count() == 1
        page.errors.check()


def test_the_status_page_asks_for_the_api_key_the_server_needs(checkpoints, tmp_path):
    flags = ["--model", f"{MODEL}={checkpoints[Variant.DISTILLED]}", "--no-warmup", "--api-key", "sesame"]
    with LiveServer(tmp_path, *flags) as server, chromium() as browser:
        page = open_page(browser, server.url + "/status")
        page.get_by_role("alert").filter(has_text="Enter this server's API key").wait_for()
        key = page.get_by_label("API key")
        key.fill("sesame")
        key.press("Enter")  # a change event
        assert row(model_section(page, MODEL), "Last hour")["Requests"] == "0"
        page.reload()  # the key stays for the tab (session storage, shared with the playground)
        assert row(model_section(page, MODEL), "Last day")["Requests"] == "0"
        page.errors.check()


def generate(server: LiveServer, body: dict) -> int:
    answer = httpx.post(f"{server.url}/v1/images/generations", json={"model": MODEL, **body}, timeout=120)
    assert answer.status_code == 200, answer.text
    return len(answer.json()["data"])


def model_section(page, model: str):
    section = page.get_by_role("region", name=model)
    section.get_by_role("table").wait_for()
    return section


def row(section, window: str) -> dict[str, str]:
    """The table row of one window, by column header."""
    headers = section.get_by_role("columnheader").all_inner_texts()
    header = section.page.get_by_role("rowheader", name=window, exact=True)
    line = section.get_by_role("row").filter(has=header)
    cells = [line.get_by_role("rowheader").inner_text(), *line.get_by_role("cell").all_inner_texts()]
    return dict(zip(headers, cells, strict=True))
