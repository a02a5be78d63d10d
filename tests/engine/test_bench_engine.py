"""The engine benchmark runs end to end on the tiny model and writes the report the issue asks for."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_engine
import pytest

CASE_KEYS = {"arch", "width", "height", "steps", "batch", "refs", "kv", "precision", "diffusers_ms",
             "kleinserve_ms", "stages_ms", "images_per_s", "peak_mem_gb"}  # fmt: skip


def test_the_tiny_benchmark_writes_its_json_report(tmp_path):
    output = tmp_path / "report.json"
    argv = ["--tiny", "--sizes", "64", "--batches", "1", "2", "--refs", "0", "1", "--ref-size", "64",
            "--runs", "1", "--output", str(output)]  # fmt: skip
    assert bench_engine.main(argv) == 0
    report = json.loads(output.read_text())
    assert {"device", "torch", "diffusers", "command", "cases"} <= set(report)
    assert report["command"].startswith("python benchmarks/bench_engine.py --tiny")
    assert [(c["batch"], c["refs"]) for c in report["cases"]] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for case in report["cases"]:
        assert set(case) >= CASE_KEYS and case["arch"] == "flux.2-klein-4b (tiny)"
        assert case["diffusers_ms"] > 0 and case["kleinserve_ms"] > 0 and case["images_per_s"] > 0
        assert {"text", "references", "denoise", "decode", "encode"} <= set(case["stages_ms"])
        assert case["max_abs_diff_vs_diffusers"] <= 1e-4  # both sides computed the same images
    assert report["attention"]["sdpa_ops_seen"]  # the profiler saw which SDPA implementation ran
    assert report["attention"]["compile"] == "off"


def test_the_kv_benchmark_runs_the_stock_kv_pipeline_and_agrees_with_it(tmp_path):
    output = tmp_path / "kv.json"
    argv = ["--tiny", "--kv", "--sizes", "64", "--refs", "1", "--ref-size", "64", "--runs", "1",
            "--output", str(output)]  # fmt: skip
    assert bench_engine.main(argv) == 0
    (case,) = json.loads(output.read_text())["cases"]
    assert case["arch"] == "flux.2-klein-9b-kv (tiny)" and case["kv"] and case["refs"] == 1
    assert case["diffusers_ms"] > 0 and case["max_abs_diff_vs_diffusers"] <= 1e-4


def test_kleinserve_alone_with_a_profile(tmp_path):
    output, profile = tmp_path / "alone.json", tmp_path / "profile.txt"
    argv = ["--tiny", "--no-diffusers", "--sizes", "64", "--runs", "1", "--output", str(output),
            "--profile", str(profile)]  # fmt: skip
    assert bench_engine.main(argv) == 0
    (case,) = json.loads(output.read_text())["cases"]
    assert case["diffusers_ms"] is None and case["speedup"] is None and case["kleinserve_ms"] > 0
    assert "Self CPU" in profile.read_text() and "aten::" in profile.read_text()


def test_the_report_is_valid_json_after_every_step(tmp_path, monkeypatch):
    """A run stopped mid-way (here: the second kleinserve case fails) leaves every finished case on disk."""
    output = tmp_path / "partial.json"
    real = bench_engine.time_kleinserve
    calls = []

    def fails_on_the_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise TimeoutError("stopped")
        return real(*args)

    monkeypatch.setattr(bench_engine, "time_kleinserve", fails_on_the_second)
    argv = ["--tiny", "--sizes", "64", "--batches", "1", "2", "--runs", "1", "--output", str(output)]
    with pytest.raises(TimeoutError):
        bench_engine.main(argv)
    cases = json.loads(output.read_text())["cases"]
    assert [c["batch"] for c in cases] == [1, 2] and all(c["diffusers_ms"] > 0 for c in cases)
    assert cases[0]["kleinserve_ms"] > 0 and "kleinserve_ms" not in cases[1]
