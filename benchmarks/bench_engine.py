"""Engine benchmark: stock diffusers beside kleinserve's engine, in one process, same weights and inputs.

    python benchmarks/bench_engine.py --tiny --sizes 256 512 --batches 1 2 --refs 0 1 \
        --output benchmarks/results/engine-cpu-tiny.json

(a) diffusers' Flux2KleinPipeline (Flux2KleinKVPipeline for --kv) as a user runs it: output_type="pil".
(b) kleinserve: GenerationRequests in, uint8 images out, each encoded as PNG (the server's work).
Each case is warmed up once, then timed `--runs` times (CUDA synchronised); the median is reported, with
per-stage milliseconds, images/s, peak GPU memory, and the largest pixel difference between (a) and (b)
on the same seed, so a speed-up can never come from computing something else. The stock pipeline is
freed before kleinserve runs (its peak memory is its own); `--no-diffusers` times kleinserve alone.
The JSON is rewritten after every step, so a run stopped by a timeout leaves every finished case; it
records the attention path taken (SDPA operators and kernels seen by the profiler, cuDNN version, compile
mode); `--profile FILE` writes the top kernels of one generation. With --quantize, the PSNR between the
two says how far fp8 moved the image.

--tiny builds the tiny random checkpoint (CPU, seconds); --checkpoint DIR benchmarks a real one.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import platform
import re
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
    command = sys.argv if argv is None else ["benchmarks/bench_engine.py", *argv]
    report = Report(args.output, {
        **environment(engine.device),
        "command": "python " + shlex.join(command),
        "checkpoint": describe_checkpoint(args, checkpoint),
        "cases": [],
    })  # fmt: skip
    shapes = args.shapes or [
        (size, batch, refs) for size in args.sizes for batch in args.batches for refs in args.refs
    ]
    # Stock diffusers first: with --full the two share modules, and the levers must not touch its run.
    stock = [time_diffusers(args, engine, pipe, shape, report) for shape in shapes]
    pipe = free(pipe, engine.device)  # kleinserve's peak memory is its own, not the stock pipeline's too
    optimizations = Optimizations.for_device(
        engine.device,
        args.compile,
        attention_backend=args.attention_backend,
        quantize=args.quantize,
        quantize_text_encoder=args.quantize_text_encoder,
    )
    apply_optimizations(
        engine.components.transformer, optimizations, engine.components.text_encoder, engine.components.vae
    )
    engine.optimizations = optimizations
    for index, (shape, baseline) in enumerate(zip(shapes, stock, strict=True)):
        report.cases[index].update(time_kleinserve(args, engine, shape, baseline))
        report.write()
        print(json.dumps(report.cases[index]), flush=True)
    report.data["attention"] = attention_path(engine, requests_for(engine, args, *shapes[0]))
    report.write()
    if args.profile:
        write_profile(engine, requests_for(engine, args, *shapes[0]), Path(args.profile))
    if args.cold_start and checkpoint:
        report.data["cold_start_s"] = cold_start(args, checkpoint)
        report.write()
    return 0


class Report:
    """The JSON report, rewritten whole (through a temporary file) after every step: a run stopped by a
    timeout still leaves a valid file holding every case finished so far."""

    def __init__(self, path: str | None, data: dict):
        self.path = Path(path) if path else None
        self.data = data
        self.write()

    @property
    def cases(self) -> list[dict]:
        return self.data["cases"]

    def write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=2) + "\n")
        partial.replace(self.path)


def describe_checkpoint(args, checkpoint: Path | None) -> str:
    if args.full:
        return "random weights, full size"
    return "tiny random weights" if args.tiny else str(checkpoint)


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
    parser.add_argument(
        "--shapes", type=shape_triple, nargs="+", metavar="SIZE:BATCH:REFS",
        help="these cases instead of every combination of --sizes, --batches and --refs",
    )  # fmt: skip
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
    parser.add_argument(
        "--no-diffusers",
        dest="diffusers",
        action="store_false",
        help="kleinserve only: no stock pipeline is built or timed (with --full it is freed at once)",
    )
    parser.add_argument("--profile", help="write a torch.profiler top-kernels table of one generation here")
    parser.add_argument("--output", help="write the JSON report here")
    args = parser.parse_args(argv)
    if args.kv and args.full == "4b":
        parser.error("--kv: the KV variant is 9B only; use --full 9b --kv")
    return args


def shape_triple(text: str) -> tuple[int, int, int]:
    try:
        size, batch, refs = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SIZE:BATCH:REFS, e.g. 1024:4:0") from None
    return size, batch, refs


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
        if not args.diffusers:
            pipe = free(pipe, device)
    else:
        name = args.model or ("flux.2-klein-9b-kv" if args.kv else "flux.2-klein-4b")
        engine = Engine.load(with_local_path(resolve_model(name), checkpoint), device=device, dtype=dtype)
        pipe = None
        if args.diffusers:
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


def time_diffusers(args, engine, pipe, shape, report: Report) -> dict | None:
    """Times the stock pipeline on one shape and records its half of the case; None without a pipeline."""
    size, batch, refs = shape
    case = {"width": size, "height": size, "batch": batch, "refs": refs, "diffusers_ms": None}
    report.cases.append(case)
    if pipe is None:
        report.write()
        return None
    requests = requests_for(engine, args, *shape)
    reset_peak_memory(engine.device)
    runs = timed(lambda: run_diffusers(pipe, requests, "pil"), args.runs, engine.device)
    case.update(diffusers_ms=round(1000 * statistics.median(runs), 2),
                diffusers_peak_mem_gb=peak_memory_gb(engine.device))  # fmt: skip
    report.write()
    return {"ms": 1000 * statistics.median(runs), "first_image": run_diffusers(pipe, requests[:1], "np")[0]}


def free(pipe, device: torch.device) -> None:
    """Drops the stock pipeline (modules the engine shares with it stay) and returns its memory to the GPU."""
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


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
    stock_ms = baseline["ms"] if baseline else None
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
        "diffusers_ms": round(stock_ms, 2) if stock_ms else None,
        "kleinserve_ms": round(1000 * kleinserve_s, 2),
        "speedup": round(stock_ms / 1000 / kleinserve_s, 3) if stock_ms else None,
        "stages_ms": {k: round(1000 * statistics.median(s[k] for s in stages[1:]), 2) for k in stages[1]},
        "images_per_s": round(batch / kleinserve_s, 3),
        "peak_mem_gb": peak_memory_gb(engine.device),
        **agreement(ours, baseline["first_image"] if baseline else None),
    }


def agreement(ours: np.ndarray, theirs: np.ndarray | None) -> dict:
    """Largest pixel difference and PSNR (dB, pixels in 0..1; None when identical) of kleinserve's first
    image against diffusers'."""
    if theirs is None:
        return {"max_abs_diff_vs_diffusers": None, "psnr_vs_diffusers_db": None}
    difference = ours.astype(np.float64) - theirs
    mse = float(np.mean(difference**2))
    return {
        "max_abs_diff_vs_diffusers": float(np.abs(difference).max()),
        "psnr_vs_diffusers_db": round(10 * np.log10(1 / mse), 2) if mse > 0 else None,
    }


def run_diffusers(pipe, requests, output_type: str):
    first = requests[0]
    kwargs = dict(
        prompt=[r.prompt for r in requests], height=first.height, width=first.width,
        num_inference_steps=first.steps, output_type=output_type,
        generator=[torch.Generator("cpu").manual_seed(r.seed) for r in requests],
    )  # fmt: skip
    if "guidance_scale" in inspect.signature(pipe.__call__).parameters:  # the KV pipeline takes none
        kwargs["guidance_scale"] = first.guidance
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


def attention_path(engine, requests) -> dict:
    """The attention path a generation actually took: the SDPA operators and attention kernels the profiler
    saw in one generation, beside the switches that choose them."""
    events = profile_generation(engine, requests[:1]).key_averages()
    names = {event.key for event in events}
    cuda = engine.device.type == "cuda"
    return {
        "sdpa_ops_seen": sorted(n for n in names if SDPA_OP.search(n)),
        "attention_kernels_seen": sorted(n for n in names if cuda and ATTENTION_KERNEL.search(n))[:12],
        "diffusers_backend": engine.optimizations.attention_backend or "native (torch SDPA picks)",
        "sdpa_enabled": {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
            "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "math": torch.backends.cuda.math_sdp_enabled(),
        },
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "compile": compile_description(engine.optimizations),
    }


def compile_description(optimizations) -> str:
    parts = ["regional: compile_repeated_blocks(fullgraph=True)"] if optimizations.compile else []
    parts += ["VAE decoder: nn.Module.compile()"] if optimizations.compile_decoder else []
    return "; ".join(parts) + ", default mode" if parts else "off"


SDPA_OP = re.compile(r"^aten::_scaled_dot_product_\w+")  # which implementation PyTorch dispatched to
ATTENTION_KERNEL = re.compile(r"flash|fmha|cudnn|attention|sdpa", re.IGNORECASE)


def profile_generation(engine, requests):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if engine.device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        engine.generate(requests)
        synchronize(engine.device)
    return profiler


def write_profile(engine, requests, path: Path) -> None:
    """The top 30 operators and kernels of one generation by their own device time (CPU time on CPU)."""
    sort_by = "self_device_time_total" if engine.device.type == "cuda" else "self_cpu_time_total"
    table = profile_generation(engine, requests[:1]).key_averages().table(sort_by=sort_by, row_limit=30)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = f"{requests[0].width}x{requests[0].height}"
    path.write_text(f"{engine.spec.id} {shape}, sorted by {sort_by}\n{table}\n")


def _picture(size: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, size // 16), max(2, size // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


if __name__ == "__main__":
    sys.exit(main())
