"""LoRA choices as requests carry them: validation, the job's stored inputs, where files come from, and the
in-memory adapter cache."""

import asyncio
import os

import pytest
import torch

from kleinserve.engine.lora_cache import LoraCache
from kleinserve.engine.lora_file import LoraModule, LoraWeights
from kleinserve.errors import InvalidRequest
from kleinserve.jobs.inputs import pack_inputs, unpack_inputs
from kleinserve.models import resolve_model
from kleinserve.request import LoraChoice, OutputOptions, build_request
from kleinserve.service.lora_sources import LoraSources
from kleinserve.service.outbound import Outbound

SPEC = resolve_model("flux.2-klein-4b")


def request(loras):
    return build_request(SPEC, prompt="x", width=64, height=64, seed=1, loras=loras)


def test_loras_default_to_none_and_scale_to_one():
    assert request(None).loras == ()
    assert request([{"path": "a.safetensors"}]).loras == (LoraChoice("a.safetensors", 1.0),)


@pytest.mark.parametrize(
    "loras,field,words",
    [
        ([{"path": "a"}] * 4, "loras", "4 LoRAs given; at most 3"),
        ([{"path": "a", "scale": 5}], "loras[0].scale", "from 0 to 4, got 5"),
        ([{"path": "a"}, {"path": "b", "scale": -0.5}], "loras[1].scale", "from 0 to 4"),
        ([{"path": "a", "scale": "high"}], "loras[0].scale", "must be a number"),
        ([{"path": ""}], "loras[0].path", "http(s) URL"),
        ([{"scale": 1}], "loras[0].path", "http(s) URL"),
        (["a.safetensors"], "loras[0]", "must be an object {path, scale}"),
        ("a.safetensors", "loras", "must be a list"),
    ],
)
def test_bad_loras_name_the_field(loras, field, words):
    with pytest.raises(InvalidRequest) as caught:
        request(loras)
    assert caught.value.field == field
    assert words in caught.value.reason


def test_a_jobs_stored_inputs_keep_its_loras():
    original = request(
        [{"path": "https://example.com/a.safetensors", "scale": 0.5}, {"path": "b", "scale": 4}]
    )
    restored, _ = unpack_inputs(pack_inputs(original, OutputOptions()))
    assert restored == original


def _weights(values: int) -> LoraWeights:
    return LoraWeights({"x": LoraModule(torch.zeros(1, values), torch.zeros(values, 1), 1.0)})


def test_the_adapter_cache_evicts_the_least_recently_used_within_its_budget():
    cache = LoraCache(max_bytes=3 * 2 * 4 * 10)  # three adapters of 2 x 10 float32 values
    for key in "abc":
        cache.get((key,), lambda: _weights(10))
    cache.get(("a",), lambda: pytest.fail("a is cached"))  # a is now the most recent
    cache.get(("d",), lambda: _weights(10))  # b goes
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (1, 4, 1)
    assert cache.stats.bytes == 240
    loaded = []
    cache.get(("b",), lambda: loaded.append("b") or _weights(10))
    assert loaded == ["b"]
    cache.get(("huge",), lambda: _weights(1000))  # larger than the budget: used, not kept
    assert cache.stats.bytes == 240


@pytest.fixture
def sources(tmp_path):
    lora_dir = tmp_path / "loras"
    (lora_dir / "styles").mkdir(parents=True)
    (lora_dir / "styles" / "ink.safetensors").write_bytes(b"x")
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    os.symlink(tmp_path / "outside.safetensors", lora_dir / "link.safetensors")
    outbound = Outbound((), max_bytes=1000, timeout_s=1)
    return LoraSources(outbound, tmp_path / "cache", lora_dir, max_bytes=1000)


def resolve(sources, source):
    return asyncio.run(sources.resolve(source, "loras[0].path"))


def test_files_in_the_lora_dir_are_found_and_listed(sources, tmp_path):
    assert resolve(sources, "styles/ink.safetensors") == sources.lora_dir / "styles" / "ink.safetensors"
    (sources.lora_dir / "a.safetensors").write_bytes(b"abc")
    (sources.lora_dir / "notes.txt").write_text("not a LoRA")
    os.symlink(sources.lora_dir / "a.safetensors", sources.lora_dir / "styles" / "also-a.safetensors")
    os.symlink(tmp_path, sources.lora_dir / "elsewhere")  # a folder outside: not entered
    listed = [(f.path, f.size_bytes) for f in sources.files()]  # link.safetensors leads out: not listed
    assert listed == [("a.safetensors", 3), ("styles/also-a.safetensors", 3), ("styles/ink.safetensors", 1)]
    assert [f.path for f in sources.files(limit=2)] == ["a.safetensors", "styles/also-a.safetensors"]


@pytest.mark.parametrize(
    "source,words",
    [
        ("../outside.safetensors", "leaves --lora-dir"),
        ("/etc/passwd", "leaves --lora-dir"),
        ("styles/../../outside.safetensors", "leaves --lora-dir"),
        ("link.safetensors", "leads out of --lora-dir"),
        ("missing.bin", "neither an http(s) URL"),
        ("ftp://example.com/a.safetensors", "neither an http(s) URL"),
    ],
)
def test_sources_outside_the_lora_dir_are_refused(sources, source, words):
    with pytest.raises(InvalidRequest) as caught:
        resolve(sources, source)
    assert caught.value.field == "loras[0].path"
    assert words in caught.value.reason


def test_a_hugging_face_repo_offline_is_a_clear_error(sources):
    with pytest.raises(InvalidRequest) as caught:
        resolve(sources, "someone/klein-style")
    assert caught.value.field == "loras[0].path"
    assert "not in the Hugging Face cache and the server is offline" in caught.value.reason


def test_a_private_address_is_refused(sources):
    with pytest.raises(InvalidRequest) as caught:
        resolve(sources, "http://127.0.0.1:9/a.safetensors")
    assert "internal address" in caught.value.reason
