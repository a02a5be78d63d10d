"""Step-preview cost: fitting the latent->RGB map once (one VAE encode of the calibration picture), and per
step the map itself plus the preview's JPEG, on the full-size FLUX.2 VAE (random weights: speed does not
depend on weight values).

    python benchmarks/bench_previews.py --sizes 512 1024 2048 --batches 1 4 \
        --output benchmarks/results/previews-cpu.json

The map runs on the engine thread (only for jobs that stream); the JPEG is encoded on a worker thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from kleinserve.engine.previews import LatentPreviewer
from kleinserve.engine.vae import LatentCodec
from kleinserve.imaging import encode_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    from diffusers import AutoencoderKLFlux2

    device = torch.device(args.device)
    vae = AutoencoderKLFlux2().to(device).eval().requires_grad_(False)
    codec = LatentCodec(vae)
    start = time.perf_counter()
    previewer = LatentPreviewer.fit(codec)
    fit_ms = 1000 * (time.perf_counter() - start)
    cases = [
        measure(previewer, device, size, batch, args.runs) for size in args.sizes for batch in args.batches
    ]
    for case in cases:
        print(json.dumps(case), flush=True)
    report = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.machine()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": "python "
        + shlex.join(sys.argv if argv is None else ["benchmarks/bench_previews.py", *argv]),
        "fit_ms": round(fit_ms, 1),
        "cases": cases,
    }
    print(json.dumps({"fit_ms": report["fit_ms"]}))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def measure(previewer: LatentPreviewer, device: torch.device, size: int, batch: int, runs: int) -> dict:
    height = width = size // 16
    tokens = torch.randn(batch, height * width, 128, device=device)
    render, jpeg = [], []
    for _ in range(runs + 1):  # the first is a warm-up
        start = time.perf_counter()
        pictures = previewer.render(tokens, height, width)
        render.append(time.perf_counter() - start)
        start = time.perf_counter()
        encode_image(pictures[0], "jpeg", 80)
        jpeg.append(time.perf_counter() - start)
    return {
        "size": size,
        "batch": batch,
        "preview": f"{2 * width}x{2 * height}",
        "map_ms_per_step": round(1000 * statistics.median(render[1:]), 3),
        "jpeg_ms_per_image": round(1000 * statistics.median(jpeg[1:]), 3),
    }


if __name__ == "__main__":
    sys.exit(main())
