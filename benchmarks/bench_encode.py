"""Image encoder benchmark: milliseconds and bytes per encoded image, per format and setting, on one CPU core.

    python benchmarks/bench_encode.py --sizes 512 1024 2048 --output benchmarks/results/encode-cpu.json

The picture is smooth noise upscaled (closer to a photo than raw noise, which no codec compresses).
This is what decides the server's PNG encoder and WebP method, and what an image costs between engine and
client. The row with options {"encoder": "fpng"} is the server's PNG (kleinserve.imaging.encode_png from the
HxWx3 uint8 array, as the engine hands it over); the other rows are Pillow's own settings.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import fpng
import numpy as np
from PIL import Image

from kleinserve.imaging import encode_png

SETTINGS = [
    ("png", {"compress_level": 0}),
    ("png", {"compress_level": 1}),
    ("png", {"compress_level": 6}),
    ("png", {"encoder": "fpng"}),  # what the server uses for PNG
    ("jpeg", {"quality": 90}),
    ("webp", {"quality": 90}),
    ("webp", {"quality": 90, "method": 0}),
]
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    cases = []
    for size in args.sizes:
        image = Image.fromarray(picture(size))
        for fmt, options in SETTINGS:
            cases.append(measure(image, fmt, options, args.runs))
            print(json.dumps(cases[-1]), flush=True)
    report = {
        "device": f"cpu ({cpu_model()}, {platform.machine()}), one thread per image",
        "pillow": Image.__version__,
        "fpng": fpng.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "command": "python "
        + shlex.join(sys.argv if argv is None else ["benchmarks/bench_encode.py", *argv]),
        "cases": cases,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def measure(image: Image.Image, fmt: str, options: dict, runs: int) -> dict:
    seconds, size = [], 0
    pixels = np.asarray(image)
    for _ in range(runs + 1):  # the first is a warm-up
        buffer = io.BytesIO()
        start = time.perf_counter()
        if options.get("encoder") == "fpng":
            size = len(encode_png(pixels))
        else:
            image.save(buffer, PIL_FORMATS[fmt], **options)
            size = buffer.tell()
        seconds.append(time.perf_counter() - start)
    return {
        "format": fmt,
        "options": options,
        "width": image.width,
        "height": image.height,
        "ms": round(1000 * statistics.median(seconds[1:]), 2),
        "bytes": size,
    }


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def picture(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(size // 16, size // 16, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


if __name__ == "__main__":
    sys.exit(main())
