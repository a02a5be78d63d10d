"""What this machine can do at klein's shapes: the ceilings the engine's figures are read against.

    python benchmarks/ceilings.py --output ceilings.json            # on a GPU
    python benchmarks/ceilings.py --small --output ceilings.json    # the same code on CPU, shrunk shapes

- GEMM TFLOP/s in bf16 and in fp8 (torch._scaled_mm, e4m3, per-row activation and per-channel weight
  scales, as the fp8 lever runs) at a transformer MLP shape: 4608 tokens (1024² image + 512 text) by the
  4B and 9B widths.
- Copy bandwidth in TB/s (bytes read + written) of a 2 GiB device-to-device copy.
- Attention TFLOP/s at the klein attention shapes (4B: 24 heads, 9B: 32 heads, x 128, 4608 tokens) for
  PyTorch's SDPA as it picks, and forced to cuDNN, flash and memory-efficient.
A case the hardware or build cannot run is recorded with its error instead of a number.
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

TOKENS = 4096 + 512  # a 1024² image's 64x64 latent patches plus the 512 prompt tokens
MODELS = {"4b": {"heads": 24, "width": 3072}, "9b": {"heads": 32, "width": 4096}}
HEAD_DIM = 128
MLP_RATIO = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="shrunk shapes, for a CPU dry run")
    parser.add_argument("--output", help="write the JSON here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shrink = 16 if args.small else 1
    command = ["benchmarks/ceilings.py", *(sys.argv[1:] if argv is None else argv)]
    report = {
        **versions(device),
        "command": "python " + shlex.join(command),
        "gemm": [gemm_case(device, name, shape, shrink) for name, shape in MODELS.items()],
        "copy": copy_case(device, (2 * 2**30) // shrink**2),
        "attention": [attention_case(device, name, shape, shrink) for name, shape in MODELS.items()],
    }
    for line in lines(report):
        print(line, flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def versions(device: torch.device) -> dict:
    import importlib.metadata as metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.machine()})",
        "capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if cuda else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        **{name: version(name) for name in ("diffusers", "transformers", "triton", "safetensors", "numpy")},
    }


def gemm_case(device: torch.device, model: str, shape: dict, shrink: int) -> dict:
    m, k, n = TOKENS // shrink, shape["width"] // shrink, shape["width"] * MLP_RATIO // shrink
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(n, k, device=device, dtype=dtype)
    flops = 2 * m * k * n
    case = {"model": model, "m": m, "k": k, "n": n, "dtype": str(dtype).removeprefix("torch.")}
    case["tflops"] = rate(flops, lambda: a @ b.t(), device)
    case["fp8_tflops"] = attempt(lambda: rate(flops, fp8_matmul(a, b), device))
    return case


def fp8_matmul(a: torch.Tensor, b: torch.Tensor):
    """x @ w.t() in float8 e4m3 with per-row scales for x and per-output-channel scales for w."""
    fp8 = torch.float8_e4m3fn
    top = torch.finfo(fp8).max
    a_scale = a.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / top
    b_scale = b.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / top
    a8 = (a / a_scale).to(fp8)
    b8 = (b / b_scale).to(fp8)
    return lambda: torch._scaled_mm(
        a8, b8.t(), scale_a=a_scale, scale_b=b_scale.t(), out_dtype=torch.bfloat16
    )


def copy_case(device: torch.device, nbytes: int) -> dict:
    source = torch.empty(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    seconds = timed(lambda: target.copy_(source), device)
    return {"bytes": nbytes, "tb_per_s": round(2 * nbytes / seconds / 1e12, 3)}


def attention_case(device: torch.device, model: str, shape: dict, shrink: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, tokens = max(1, shape["heads"] // shrink), TOKENS // shrink
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(1, heads, tokens, HEAD_DIM, device=device, dtype=dtype) for _ in range(3))
    flops = 4 * heads * tokens * tokens * HEAD_DIM

    def attention():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    def forced(backend):
        def run():
            with sdpa_kernel([backend]):
                return attention()

        return run

    case = {"model": model, "heads": heads, "tokens": tokens, "head_dim": HEAD_DIM}
    case["default_tflops"] = attempt(lambda: rate(flops, attention, device))
    for name, backend in [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:  # fmt: skip
        case[f"{name}_tflops"] = attempt(lambda backend=backend: rate(flops, forced(backend), device))
    return case


def rate(flops: int, function, device: torch.device) -> float:
    return round(flops / timed(function, device) / 1e12, 3)


def timed(function, device: torch.device, warmups: int = 3, runs: int = 10) -> float:
    """Median seconds of one call: CUDA events on a GPU, the wall clock on CPU."""
    for _ in range(warmups):
        function()
    seconds = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1000)
        else:
            began = time.perf_counter()
            function()
            seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def attempt(measure):
    try:
        return measure()
    except Exception as error:  # a kernel this device or build lacks: record why, go on
        first_sentence = (str(error).splitlines() or [""])[0].split(". ")[0]
        return f"unavailable: {type(error).__name__}: {first_sentence[:100]}"


def lines(report: dict) -> list[str]:
    out = [f"ceilings on {report['device']} (torch {report['torch']}, cuda {report['cuda']}, "
           f"cudnn {report['cudnn']}), TFLOP/s and TB/s"]  # fmt: skip
    for case in report["gemm"]:
        shape = f"{case['m']}x{case['k']}x{case['n']}"
        rates = f"{case['dtype']} {case['tflops']}, fp8 {case['fp8_tflops']}"
        out.append(f"  gemm {case['model']} {shape}: {rates}")
    out.append(f"  copy {report['copy']['bytes'] / 2**30:.2f} GiB: {report['copy']['tb_per_s']}")
    for case in report["attention"]:
        shape = f"{case['heads']}x{case['tokens']}x{case['head_dim']}"
        rates = ", ".join(f"{k.removesuffix('_tflops')} {v}" for k, v in case.items() if "_tflops" in k)
        out.append(f"  attention {case['model']} {shape}: {rates}")
    return out


if __name__ == "__main__":
    sys.exit(main())
