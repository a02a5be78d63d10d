"""GET /v1/usage on live servers: each key sees its own usage, the admin key everyone's; megapixels and cost
are the sums of the jobs made; the ledger outlives a restart; bad flags and parameters name themselves."""

import hashlib
import re
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from kleinserve.models import Variant

from support.live_server import LiveServer

MODEL = "flux.2-klein-4b"
USD_PER_MP = 0.5
KEYS = {"A": "key-a-secret", "B": "key-b-secret", "ADMIN": "the-admin-secret"}
# (who, width, height, n): jobs of different sizes, some of two images
JOBS = [("A", 64, 64, 1), ("A", 128, 64, 2), ("B", 96, 64, 1), ("B", 64, 128, 2), ("ADMIN", 64, 64, 1)]


def fingerprint(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def headers(who: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[who]}"}


def generate(server: LiveServer, who: str | None, width: int, height: int, n: int) -> None:
    answer = httpx.post(
        f"{server.url}/v1/images/generations",
        json={"prompt": f"{width}x{height}", "size": f"{width}x{height}", "n": n, "response_format": "url"},
        headers=headers(who) if who else {},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text


def usage(server: LiveServer, who: str | None, **params) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/usage", params=params, headers=headers(who) if who else {}, timeout=30)


def megapixels(jobs) -> float:
    return sum(n * width * height / 1e6 for _, width, height, n in jobs)


def server_flags(checkpoints) -> list[str]:
    return ["--model", f"{MODEL}={checkpoints[Variant.DISTILLED]}", "--no-warmup"]


@pytest.fixture(scope="module")
def keyed(checkpoints, tmp_path_factory):
    """A server with two keys and an admin key, priced per megapixel (through an alias), after JOBS ran."""
    flags = ["--api-key", KEYS["A"], "--api-key", KEYS["B"], "--admin-key", KEYS["ADMIN"],
             "--price", f"flux-2-klein-4b={USD_PER_MP}"]  # fmt: skip
    with LiveServer(tmp_path_factory.mktemp("usage") / "data", *server_flags(checkpoints), *flags) as server:
        for job in JOBS:
            generate(server, *job)
        yield server


def test_each_key_sees_only_its_own_usage_and_its_sums(keyed):
    for who in ("A", "B"):
        body = usage(keyed, who).json()
        made = [job for job in JOBS if job[0] == who]
        assert body["object"] == "usage" and body["key"] == fingerprint(KEYS[who]) and body["admin"] is False
        assert {row["key"] for row in body["data"]} == {fingerprint(KEYS[who])}
        assert {row["model"] for row in body["data"]} == {MODEL}
        totals = body["totals"]
        assert totals["requests"] == len(made) and totals["images"] == sum(job[3] for job in made)
        assert totals["megapixels"] == pytest.approx(megapixels(made))
        assert totals["cost_usd"] == pytest.approx(megapixels(made) * USD_PER_MP)
        assert totals["engine_seconds"] > 0
        assert body["prices"] == {MODEL: {"usd_per_megapixel": USD_PER_MP}}
        assert KEYS[who] not in usage(keyed, who).text  # the key itself is never shown


def test_the_admin_key_sees_every_key_and_filters_by_key_model_and_time(keyed):
    everyone = usage(keyed, "ADMIN").json()
    assert everyone["admin"] is True
    assert {row["key"] for row in everyone["data"]} == {fingerprint(key) for key in KEYS.values()}
    assert everyone["totals"]["requests"] == len(JOBS)
    assert everyone["totals"]["megapixels"] == pytest.approx(megapixels(JOBS))
    assert everyone["totals"]["cost_usd"] == pytest.approx(megapixels(JOBS) * USD_PER_MP)

    only_b = usage(keyed, "ADMIN", key=fingerprint(KEYS["B"])).json()
    assert only_b["data"] == usage(keyed, "B").json()["data"]

    first_day = everyone["data"][0]["day"]  # UTC days
    next_day = (date.fromisoformat(everyone["data"][-1]["day"]) + timedelta(days=1)).isoformat()
    assert usage(keyed, "ADMIN", model="fal-ai/flux-2/klein/4b").json()["totals"] == everyone["totals"]
    assert usage(keyed, "ADMIN", since=first_day, until=next_day).json()["data"] == everyone["data"]
    assert usage(keyed, "ADMIN", since=f"{next_day}T00:00:00Z").json()["data"] == []
    long_ago = str(int(datetime(2020, 1, 1, tzinfo=UTC).timestamp()))
    assert usage(keyed, "ADMIN", until=long_ago).json()["data"] == []
    assert usage(keyed, "ADMIN", model="flux.2-klein-9b").json()["totals"]["requests"] == 0


def test_a_key_may_not_see_another_keys_usage(keyed):
    refused = usage(keyed, "A", key=fingerprint(KEYS["B"]))
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "key"
    assert usage(keyed, "A", key=fingerprint(KEYS["A"])).json()["data"] == usage(keyed, "A").json()["data"]
    assert usage(keyed, None).status_code == 401


def test_usage_is_counted_in_prometheus_per_model(keyed):
    metrics = httpx.get(f"{keyed.url}/metrics").text
    cost = re.search(rf'kleinserve_usage_cost_usd_total{{model="{MODEL}"}} (\S+)', metrics)
    seconds = re.search(rf'kleinserve_usage_engine_seconds_total{{model="{MODEL}"}} (\S+)', metrics)
    assert float(cost.group(1)) == pytest.approx(megapixels(JOBS) * USD_PER_MP)
    accounted = usage(keyed, "ADMIN").json()["totals"]["engine_seconds"]
    assert float(seconds.group(1)) == pytest.approx(accounted, abs=0.01)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2024-13-01"}, "until"),
        ({"since": "2024-03-02", "until": "2024-03-01"}, "until"),
        ({"since": "9" * 50}, "since"),
        ({"model": "no-such-model"}, "model"),
        ({"model": ""}, "model"),
        ({"key": "not-a-fingerprint"}, "key"),
    ],
)
def test_bad_parameters_are_400_naming_them(keyed, params, param):
    answer = usage(keyed, "ADMIN", **params)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text


def test_usage_and_its_cost_at_the_time_survive_a_restart(checkpoints, tmp_path):
    data = tmp_path / "data"
    first = [(None, 64, 64, 2)]
    with LiveServer(data, *server_flags(checkpoints), "--price", f"{MODEL}={USD_PER_MP}/mp") as server:
        generate(server, *first[0])
        before = usage(server, None).json()  # an open server: callers see the open server's usage
    assert [row["key"] for row in before["data"]] == [None]
    assert before["totals"]["cost_usd"] == pytest.approx(megapixels(first) * USD_PER_MP)

    per_image = 0.25
    keyed = ["--api-key", KEYS["A"], "--admin-key", KEYS["ADMIN"], "--price", f"{MODEL}={per_image}/image"]
    with LiveServer(data, *server_flags(checkpoints), *keyed) as server:
        assert usage(server, "A").json()["data"] == []  # the open server's usage is not this key's
        generate(server, "A", 96, 96, 1)
        mine = usage(server, "A").json()
        everyone = usage(server, "ADMIN").json()
    assert mine["prices"] == {MODEL: {"usd_per_image": per_image}}
    assert mine["totals"]["cost_usd"] == pytest.approx(per_image)  # the price when the job finished
    by_key = {row["key"]: row for row in everyone["data"]}
    assert by_key[None]["megapixels"] == pytest.approx(megapixels(first))
    assert by_key[None]["cost_usd"] == pytest.approx(megapixels(first) * USD_PER_MP)  # kept as it was
    assert everyone["totals"]["cost_usd"] == pytest.approx(megapixels(first) * USD_PER_MP + per_image)
