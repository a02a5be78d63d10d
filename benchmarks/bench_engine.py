"""Engine benchmark: stock diffusers beside kleinserve's engine, in one process, same weights and inputs.

    python benchmarks/bench_engine.py --tiny --sizes 256 512 --batches 1 2 --refs 0 1 \
        --output benchmarks/results/engine-cpu-tiny.json

(a) diffusers' Flux2KleinPipeline (Flux2KleinKVPipeline for --kv) as a user runs it: output_type="pil".
(b) kleinserve: GenerationRequests in, uint8 images out, each encoded as PNG (the server's work).
Each case is warmed up once, then timed `--runs` times (CUDA synchronised); the median is reported, with
per-stage milliseconds, images/s, peak GPU memory, and the largest pixel difference between (a) and (b)
on the same seed, so a speed-up can never come from computing something else (with --quantize, the PSNR
between the two says how far fp8 moved the image).

--tiny builds the tiny random checkpoint (CPU, seconds); --checkpoint DIR benchmarks a real one.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kleinserve.engine.optimize import Optimizations, apply_optimizations


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checkpoint = None if args.full else prepare_checkpoint(args)
    engine, pipe = load_both(args, checkpoint)
    shapes = [(size, batch, refs) for size in args.sizes for batch in args.batches for refs in args.refs]
    # Stock diffusers first: with --full the two share modules, and the levers must not touch its run.
    stock = [time_diffusers(args, engine, pipe, shape) for shape in shapes]
    optimizations = Optimizations.for_device(
        engine.device,
        args.compile,
        attention_backend=args.attention_backend,
        quantize=args.quantize,
        quantize_text_encoder=args.quantize_text_encoder,
    )
    apply_optimizations(engine.components.transformer, optimizations, engine.components.text_encoder)
    engine.optimizations = optimizations
    cases = []
    for shape, baseline in zip(shapes, stock, strict=True):
        cases.append(time_kleinserve(args, engine, shape, baseline))
        print(json.dumps(cases[-1]), flush=True)
    report = {
        **environment(engine.device),
        "command": "python "
        + shlex.join(sys.argv if argv is None else ["benchmarks/bench_engine.py", *argv]),
        "checkpoint": "random weights, full size"
        if args.full
        else "tiny random weights"
        if args.tiny
        else str(checkpoint),
        "cold_start_s": cold_start(args, checkpoint) if args.cold_start and checkpoint else None,
        "cases": cases,
    }
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--tiny", action="store_true", help="the tiny random checkpoint (built in a temp dir)"
    )
    source.add_argument("--checkpoint", type=Path, help="a FLUX.2 [klein] checkpoint directory")
    source.add_argument("--full", choices=["4b", "9b"], help="full-size random weights built on the device")
    parser.add_argument(
        "--model", help="the registry id the checkpoint is (default flux.2-klein-4b, or -9b-kv)"
    )
    parser.add_argument("--kv", action="store_true", help="the KV variant (Flux2KleinKVPipeline)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--refs", type=int, nargs="+", default=[0])
    parser.add_argument("--ref-size", type=int, default=1024, help="reference images are REF x REF")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="regional torch.compile (default: on for CUDA, off for CPU)",
    )
    parser.add_argument("--attention-backend", help="a diffusers attention backend (default: PyTorch SDPA)")
    parser.add_argument("--quantize", choices=["fp8"], help="fp8 transformer block linears (default: off)")
    parser.add_argument(
        "--quantize-text-encoder", choices=["fp8"], help="fp8 text encoder linears (default: off)"
    )
    parser.add_argument(
        "--prompt-cache",
        type=int,
        default=0,
        help="prompt cache size (default 0: every run encodes its prompts, as diffusers does)",
    )
    parser.add_argument("--cold-start", action="store_true", help="also time process start to first image")
    parser.add_argument("--output", help="write the JSON report here")
    args = parser.parse_args(argv)
    if args.kv and args.full == "4b":
        parser.error("--kv: the KV variant is 9B only; use --full 9b --kv")
    return args


def prepare_checkpoint(args) -> Path:
    if args.checkpoint:
        return args.checkpoint
    from kleinserve.models import Variant
    from kleinserve.tiny import write_tiny_checkpoint

    variant = Variant.KV if args.kv else Variant.DISTILLED
    return write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="kleinserve-bench-")) / "tiny", variant)


def load_both(args, checkpoint: Path | None):
    from diffusers import Flux2KleinKVPipeline, Flux2KleinPipeline

    from kleinserve.engine import Engine
    from kleinserve.engine.loading import default_device, resolve_dtype
    from kleinserve.models import resolve_model, with_local_path

    device = torch.device(args.device) if args.device else default_device()
    dtype = resolve_dtype(args.dtype, device)
    if args.full:
        import full_size

        engine, pipe = full_size.build(args.full, device, dtype, kv=args.kv)
    else:
        name = args.model or ("flux.2-klein-9b-kv" if args.kv else "flux.2-klein-4b")
        engine = Engine.load(with_local_path(resolve_model(name), checkpoint), device=device, dtype=dtype)
        pipeline_class = Flux2KleinKVPipeline if args.kv else Flux2KleinPipeline
        pipe = pipeline_class.from_pretrained(checkpoint, dtype=dtype).to(device)
        pipe.set_progress_bar_config(disable=True)
    engine.prompts.cache_size = args.prompt_cache
    return engine, pipe


def requests_for(engine, args, size: int, batch: int, refs: int) -> list:
    from kleinserve.request import build_request

    references = [_picture(args.ref_size, seed=i) for i in range(refs)]
    return [
        build_request(
            engine.spec,
            prompt=f"benchmark prompt {i}",
            images=references,
            width=size,
            height=size,
            steps=args.steps,
            seed=i,
        )
        for i in range(batch)
    ]


def time_diffusers(args, engine, pipe, shape) -> dict:
    requests = requests_for(engine, args, *shape)
    reset_peak_memory(engine.device)
    runs = timed(lambda: run_diffusers(pipe, requests, "pil"), args.runs, engine.device)
    return {
        "ms": 1000 * statistics.median(runs),
        "peak_mem_gb": peak_memory_gb(engine.device),
        "first_image": run_diffusers(pipe, requests[:1], "np")[0],
    }


def time_kleinserve(args, engine, shape, baseline: dict) -> dict:
    size, batch, refs = shape
    requests = requests_for(engine, args, *shape)
    reset_peak_memory(engine.device)
    seconds, stages = [], []
    for _ in range(args.runs + 1):  # the first is the warm-up
        elapsed, timings = run_kleinserve(engine, requests)
        seconds.append(elapsed)
        stages.append(timings)
    kleinserve_s = statistics.median(seconds[1:])
    ours = engine.generate(requests[:1], output="float")[0].images[0]
    return {
        "arch": engine.spec.id + (" (tiny)" if args.tiny else ""),
        "levers": engine.optimizations.describe() + f", prompt_cache={args.prompt_cache}",
        "width": size,
        "height": size,
        "steps": args.steps,
        "batch": batch,
        "refs": refs,
        "kv": bool(args.kv),
        "precision": str(engine.components.dtype).removeprefix("torch."),
        "diffusers_ms": round(baseline["ms"], 2),
        "kleinserve_ms": round(1000 * kleinserve_s, 2),
        "speedup": round(baseline["ms"] / 1000 / kleinserve_s, 3),
        "stages_ms": {k: round(1000 * statistics.median(s[k] for s in stages[1:]), 2) for k in stages[1]},
        "images_per_s": round(batch / kleinserve_s, 3),
        "peak_mem_gb": peak_memory_gb(engine.device),
        "diffusers_peak_mem_gb": baseline["peak_mem_gb"],
        "max_abs_diff_vs_diffusers": float(np.abs(ours.astype(np.float64) - baseline["first_image"]).max()),
        "psnr_db_vs_diffusers": psnr(ours, baseline["first_image"]),
    }


def psnr(image: np.ndarray, reference: np.ndarray) -> float | None:
    """Of images in [0, 1]; None when they are the same."""
    mse = float(np.mean((image.astype(np.float64) - reference) ** 2))
    return round(10 * np.log10(1.0 / mse), 2) if mse > 0 else None


def run_diffusers(pipe, requests, output_type: str):
    first = requests[0]
    kwargs = dict(
        prompt=[r.prompt for r in requests], height=first.height, width=first.width,
        num_inference_steps=first.steps, output_type=output_type, guidance_scale=first.guidance,
        generator=[torch.Generator("cpu").manual_seed(r.seed) for r in requests],
    )  # fmt: skip
    if first.images:
        kwargs["image"] = list(first.images)
    return pipe(**kwargs).images


def run_kleinserve(engine, requests) -> tuple[float, dict[str, float]]:
    """Request in, encoded PNG out: the engine's stages plus the image encoding the server does."""
    from kleinserve.imaging import encode_image

    synchronize(engine.device)
    start = time.perf_counter()
    results = engine.generate(requests)
    encode_start = time.perf_counter()
    for result in results:
        for image in result.images:
            encode_image(image, "png")
    end = time.perf_counter()
    return end - start, {**results[0].timings, "encode": end - encode_start}


def timed(function, runs: int, device: torch.device) -> list[float]:
    function()  # warm-up
    seconds = []
    for _ in range(runs):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def cold_start(args, checkpoint: Path) -> float:
    """Seconds from process start to the first image written, through the CLI."""
    with tempfile.TemporaryDirectory() as directory:
        size = f"{args.sizes[0]}x{args.sizes[0]}"
        command = [sys.executable, "-m", "kleinserve", "generate", "cold start", "--model", str(checkpoint)]
        command += ["--size", size, "-o", f"{directory}/x.png"]
        if args.device:
            command += ["--device", args.device]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return round(time.perf_counter() - start, 3)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def environment(device: torch.device) -> dict:
    import diffusers

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})"
    )
    return {
        "device": name,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


def _picture(size: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, size // 16), max(2, size // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


if __name__ == "__main__":
    sys.exit(main())
