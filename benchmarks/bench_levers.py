"""The next levers the H200 profile points at, each timed on its own full-size module (random weights):

    python benchmarks/bench_levers.py --output levers.json           # on a GPU
    python benchmarks/bench_levers.py --small --output levers.json   # the same code on CPU, shrunk shapes

The engine run (results/engine-*-h200.json) put a 4B 1024² request at 383 ms: text 27, denoise 234,
decode 92, encode 10. Its profile: the VAE's GroupNorm took 52 of the decode's 92 ms (one
RowwiseMoments block per group: 32 blocks on a 132-SM chip), layout conversions around cuDNN's
convolutions 8 more; the text encoder's 27 layers run eager. Each case here times one lever against today's
path on the same inputs (CUDA events, median of --runs after warm-ups; the first call's seconds, which
include compiling, recorded apart) and the largest difference from today's output:
- decode a 1024² latent: eager (today), torch.compile'd decoder, channels_last;
- the 27-layer text encoder on 512 tokens: eager, compiled;
- an fp8 linear at the 4B MLP shape: bf16 F.linear, Fp8Linear eager and compiled, and _scaled_mm alone
  on pre-quantized activations (what quantizing the activations costs);
- encode one 1024² reference (the "references" stage): eager, compiled encoder.
A case that fails is recorded with its error; the JSON is rewritten after every case.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from ceilings import timed, versions  # benchmarks/ is on the path

from kleinserve.engine.architectures import QWEN3, SIZES
from kleinserve.engine.loading import TEXT_ENCODER_LAYERS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="shrunk shapes, for a CPU dry run")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--output", help="write the JSON here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    command = ["benchmarks/bench_levers.py", *(sys.argv[1:] if argv is None else argv)]
    report = {**versions(device), "command": "python " + shlex.join(command), "cases": []}
    bench = Bench(report, args.output, device, args.runs)
    pixels = 64 if args.small else 1024
    vae = full_size_vae(device, dtype)
    decode_cases(bench, vae, device, dtype, pixels)
    text_cases(bench, device, dtype, small=args.small)
    fp8_cases(bench, device, dtype, small=args.small)
    encode_cases(bench, vae, device, dtype, pixels)  # last: the smallest stage of the four
    for line in bench.lines():
        print(line, flush=True)
    return 0


class Bench:
    def __init__(self, report: dict, output: str | None, device: torch.device, runs: int):
        self.report, self.device, self.runs = report, device, runs
        self.path = Path(output) if output else None
        self.write()

    def case(
        self, group: str, name: str, function, reference: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Times `function` (no arguments); returns its output (None if it failed)."""
        entry = {"group": group, "lever": name}
        self.report["cases"].append(entry)
        try:
            began = time.perf_counter()
            with torch.inference_mode():
                output = function()
                synchronize(self.device)
                entry["first_call_s"] = round(time.perf_counter() - began, 2)
                entry["ms"] = round(1000 * timed(function, self.device, warmups=2, runs=self.runs), 3)
        except Exception as error:  # a lever this build cannot run: record why and go on
            entry["error"] = (
                f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
            )
            self.write()
            print(json.dumps(entry), flush=True)
            return None
        if reference is not None:
            entry["max_abs_diff"] = float((output.float() - reference.float()).abs().max())
        self.write()
        print(json.dumps(entry), flush=True)
        return output

    def write(self) -> None:
        if self.path is None:
            return
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.report, indent=2) + "\n")
        partial.replace(self.path)

    def lines(self) -> list[str]:
        out = [f"levers on {self.report['device']} (torch {self.report['torch']}): group | lever | ms | "
               "first call s | max abs diff"]  # fmt: skip
        for c in self.report["cases"]:
            result = c.get("error") or f"{c['ms']} | {c['first_call_s']} | {c.get('max_abs_diff', '-')}"
            out.append(f"  {c['group']} | {c['lever']} | {result}")
        return out


def full_size_vae(device, dtype):
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(0)
    with torch.device(device):
        return AutoencoderKLFlux2().to(dtype).eval().requires_grad_(False)


def decode_cases(bench: Bench, vae, device, dtype, pixels: int) -> None:
    latent = torch.randn(1, vae.config.latent_channels, pixels // 8, pixels // 8, device=device, dtype=dtype)
    group = f"vae decode {pixels}²"
    today = bench.case(group, "eager (today)", lambda: vae.decode(latent, return_dict=False)[0])
    decoder = vae.decoder
    vae.decoder = torch.compile(decoder)
    bench.case(group, "compiled decoder", lambda: vae.decode(latent, return_dict=False)[0], today)
    vae.decoder = decoder
    vae.to(memory_format=torch.channels_last)
    bench.case(group, "channels_last", lambda: vae.decode(latent, return_dict=False)[0], today)
    vae.to(memory_format=torch.contiguous_format)


def encode_cases(bench: Bench, vae, device, dtype, pixels: int) -> None:
    image = torch.rand(1, 3, pixels, pixels, device=device, dtype=dtype) * 2 - 1
    group = f"vae encode {pixels}² reference"
    today = bench.case(group, "eager (today)", lambda: vae.encode(image).latent_dist.mode())
    vae.encoder = torch.compile(vae.encoder)
    bench.case(group, "compiled encoder", lambda: vae.encode(image).latent_dist.mode(), today)


def text_cases(bench: Bench, device, dtype, small: bool) -> None:
    from transformers import Qwen3Config, Qwen3Model

    shapes = dict(SIZES["4b"]["text"])
    config = {**QWEN3, "num_hidden_layers": TEXT_ENCODER_LAYERS}
    if small:
        shapes.update(hidden_size=64, intermediate_size=128)
        config.update(num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=1024)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3Model(Qwen3Config(**config, **shapes)).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)
    tokens = 64 if small else 512
    ids = torch.randint(0, config["vocab_size"], (1, tokens), device=device)
    mask = torch.ones_like(ids)
    mask[:, tokens // 4 :] = 0  # a short prompt padded to 512, as the engine sends it

    def run(module):
        return lambda: module(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                              use_cache=False).hidden_states[-1]  # fmt: skip

    group = f"text encoder 4B, {TEXT_ENCODER_LAYERS} layers, {tokens} tokens"
    today = bench.case(group, "eager (today)", run(model))
    bench.case(group, "compiled", run(torch.compile(model)), today)
    del model


def fp8_cases(bench: Bench, device, dtype, small: bool) -> None:
    from kleinserve.engine.fp8 import Fp8Linear, has_fp8_matmul, quantize_rows

    tokens, width = (
        (288, 192) if small else (4096 + 512, SIZES["4b"]["transformer"]["num_attention_heads"] * 128)
    )
    torch.manual_seed(0)
    with torch.device(device):
        linear = torch.nn.Linear(width, 3 * width, bias=False).to(dtype)
    x = torch.randn(tokens, width, device=device, dtype=dtype)
    group = f"linear {tokens}x{width} -> {3 * width}"
    today = bench.case(group, f"{str(dtype).removeprefix('torch.')} F.linear (today)", lambda: linear(x))
    fp8 = Fp8Linear.from_linear(linear)
    path = "fp8 matmul" if fp8.fp8_matmul else "weight-only"
    bench.case(group, f"Fp8Linear eager ({path})", lambda: fp8(x), today)
    compiled = torch.compile(fp8)
    bench.case(group, "Fp8Linear compiled", lambda: compiled(x), today)
    if has_fp8_matmul(device):
        quantized, row_scale = quantize_rows(x)
        bench.case(group, "_scaled_mm alone (activations pre-quantized)", lambda: torch._scaled_mm(
            quantized, fp8.weight.t(), scale_a=row_scale, scale_b=fp8.scale.view(1, -1),
            out_dtype=torch.bfloat16), today)  # fmt: skip
        bench.case(group, "quantize_rows alone", lambda: quantize_rows(x)[0])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
