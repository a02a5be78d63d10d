"""LoRA benchmark: 4 requests with 4 different LoRAs, mixed in one batch (kleinserve applies LoRA unfused,
per sample) against one LoRA set at a time (what a server that fuses or swaps adapters must do), and no LoRA.

    python benchmarks/bench_lora.py --size 256 --output benchmarks/results/lora-cpu-tiny.json

On the tiny random checkpoint (--tiny, the default) or a real diffusers tree (--checkpoint DIR). Each case is
warmed once and timed --runs times; the median is reported with images/s and the engine's per-stage ms. The
LoRA stage (files parsed and fitted, or taken from the in-memory cache, then stacked per sample) is timed cold
(cache emptied) and warm.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from kleinserve.engine import Engine
from kleinserve.models import Variant, resolve_model
from kleinserve.request import build_request
from kleinserve.tiny import write_tiny_checkpoint


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or write_tiny_checkpoint(Path(folder) / "tiny", Variant.DISTILLED)
        engine = Engine.load(resolve_model(str(checkpoint)))
        loras = [write_lora(engine, Path(folder) / f"lora{i}.safetensors", i, args.rank) for i in range(4)]
        requests = [request(engine, args, [lora], seed=i) for i, lora in enumerate(loras)]
        plain = [request(engine, args, [], seed=i) for i in range(4)]
        cases = {
            "4 LoRAs mixed in one batch": [requests],
            "one LoRA set at a time": [[r] for r in requests],
            "no LoRA, one batch of 4": [plain],
        }
        command = sys.argv if argv is None else ["benchmarks/bench_lora.py", *argv]
        report = {**environment(), "command": "python " + shlex.join(command),
                  "checkpoint": str(args.checkpoint or "tiny"), "size": args.size, "steps": args.steps,
                  "rank": args.rank, "cases": []}  # fmt: skip
        for name, batches in cases.items():
            report["cases"].append(time_case(engine, name, batches, args.runs))
        report["lora_stage_ms"] = lora_stage(engine, requests)
        text = json.dumps(report, indent=2)
        print(text)
        if args.output:
            args.output.write_text(text + "\n")
    return 0


def write_lora(engine: Engine, path: Path, seed: int, rank: int) -> Path:
    """Random A/B on every linear of the transformer (diffusers/PEFT keys)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (fan_in, fan_out) in engine.lora_slots.shapes.items():
        tensors[f"transformer.{name}.lora_A.weight"] = (
            torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
        )
        tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.01
    save_file(tensors, str(path))
    return path


def request(engine: Engine, args, loras: list[Path], seed: int):
    return build_request(
        engine.spec, prompt=f"picture {seed}", width=args.size, height=args.size, steps=args.steps, seed=seed,
        loras=[{"path": str(path), "scale": 1.0} for path in loras],
    )  # fmt: skip


def time_case(engine: Engine, name: str, batches: list, runs: int) -> dict:
    for batch in batches:  # warm: files parsed into the cache, first-call costs paid
        engine.generate(batch)
    times, stages = [], {}
    for _ in range(runs):
        start = time.perf_counter()
        for batch in batches:
            for stage, seconds in engine.generate(batch)[0].timings.items():
                stages.setdefault(stage, []).append(seconds * 1000)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    images = sum(len(batch) for batch in batches)
    return {
        "case": name, "engine_calls": len(batches), "images": images, "median_s": round(seconds, 4),
        "images_per_s": round(images / seconds, 3),
        "stages_ms_per_call": {k: round(statistics.median(v), 2) for k, v in stages.items()},
    }  # fmt: skip


def lora_stage(engine: Engine, requests: list) -> dict:
    engine.lora_cache._entries.clear()
    engine.lora_cache.stats.bytes = 0
    cold = engine.generate(requests)[0].timings["lora"] * 1000
    warm = engine.generate(requests)[0].timings["lora"] * 1000
    stats = engine.lora_cache.stats
    return {"cold_4_files": round(cold, 2), "warm_4_cached": round(warm, 2), "cache_bytes": stats.bytes,
            "cache_hits": stats.hits, "cache_misses": stats.misses}  # fmt: skip


def environment() -> dict:
    import diffusers

    return {
        "device": f"cpu ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads",
        "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
    }  # fmt: skip


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a diffusers tree (default: the tiny random one)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", type=Path)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
