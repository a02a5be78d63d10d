"""The engine benchmark runs end to end on the tiny model and writes the report the issue asks for."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_engine

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
