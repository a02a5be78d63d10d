"""`kleinserve plan`: the GPU memory a model's weights take, per component, before anything is loaded
(engine/memory_plan.py counts them on the meta device), and whether it fits a given GPU."""

from __future__ import annotations

import argparse
import json
import os

from kleinserve.errors import InvalidRequest
from kleinserve.models import REGISTRY, ModelSpec, resolve_model
from kleinserve.settings import DEFAULT_SAFETY_MODEL, DTYPES, OFFLOADABLE

PLACEMENTS = {"gpu": "gpu", "cpu": "cpu, gpu to encode"}


def add_plan_parser(commands) -> None:
    plan = commands.add_parser(
        "plan",
        help="print each component's weight memory in a precision and placement, and what fits a GPU",
        epilog="Counts parameters from the real configs on the meta device: nothing is loaded or downloaded.",
    )
    plan.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="ID",
        help="registry id or alias, or a checkpoint directory (repeatable)",
    )
    plan.add_argument(
        "--quantize",
        choices=("fp8",),
        help="fp8 linear weights in the transformer's blocks (as serve's; default: none)",
    )
    plan.add_argument(
        "--quantize-text-encoder",
        choices=("fp8",),
        help="fp8 linear weights in the text encoder's decoder layers (as serve's; default: none)",
    )
    plan.add_argument(
        "--offload",
        choices=OFFLOADABLE,
        help="keep the text encoder in CPU memory, on the GPU "
        "only to encode a new prompt (as `serve --offload text-encoder`)",
    )
    plan.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="default bfloat16 (CUDA's)")
    plan.add_argument(
        "--gpu-memory-gb",
        type=float,
        metavar="GB",
        help="say whether each model fits a GPU of this many GB (1e9 bytes), and the largest "
        "registry model that does",
    )
    plan.add_argument(
        "--prompt-cache-size", type=int, default=16, metavar="N", help="as serve's (default 16)"
    )
    plan.add_argument(
        "--safety-model",
        default=os.environ.get("KLEINSERVE_SAFETY_MODEL", DEFAULT_SAFETY_MODEL),
        metavar="REPO|DIR",
        help=f"the safety classifier counted (default KLEINSERVE_SAFETY_MODEL, as serve's, else "
        f"{DEFAULT_SAFETY_MODEL})",
    )
    plan.add_argument("--no-safety-checker", action="store_true", help="leave the safety checker out")
    plan.add_argument("--json", action="store_true", help="print JSON instead of tables")


def plan(args: argparse.Namespace) -> int:
    import torch

    from kleinserve.engine.memory_plan import Allowance, plan_classifier, plan_model
    from kleinserve.service.safety import classifier_config

    if args.gpu_memory_gb is not None and not args.gpu_memory_gb > 0:
        raise InvalidRequest("--gpu-memory-gb", "must be more than 0")
    if args.prompt_cache_size < 0:
        raise InvalidRequest("--prompt-cache-size", "must not be negative")
    specs = [resolve_model(name) for name in args.model]  # unknown ids fail here, listing the known ones
    classifier = None if args.no_safety_checker else plan_classifier(*classifier_config(args.safety_model))
    options = dict(
        dtype=getattr(torch, args.dtype),
        quantize=args.quantize,
        quantize_text_encoder=args.quantize_text_encoder,
        offload=args.offload,
        prompt_cache_size=args.prompt_cache_size,
        classifier=classifier,
    )
    plans = [plan_model(spec, **options) for spec in specs]
    allowance = Allowance()
    gpu = args.gpu_memory_gb * 1e9 if args.gpu_memory_gb is not None else None
    largest = _largest_fitting(gpu, options, allowance) if gpu is not None else None
    if args.json:
        report = {
            "models": [p.as_dict(allowance) for p in plans],
            "allowance": {
                "generating_bytes": allowance.generating,
                "encoding_bytes": allowance.encoding,
                "estimate": True,
                "describe": allowance.describe(),
            },
        }
        if gpu is not None:
            report["gpu_memory_gb"] = args.gpu_memory_gb
            report["fits"] = {p.model: p.peak(allowance) <= gpu for p in plans}
            report["largest_fitting"] = largest[0].id if largest else None
        print(json.dumps(report, indent=2))
        return 0
    for model_plan in plans:
        print("\n".join(_table(model_plan, allowance)) + "\n")
    print(f"allowance: {allowance.describe()}")
    if gpu is not None:
        for model_plan in plans:
            peak = model_plan.peak(allowance) / 1e9
            verdict = "fits" if model_plan.peak(allowance) <= gpu else "does not fit"
            print(f"{model_plan.model} {verdict} in {args.gpu_memory_gb:g} GB (peak {peak:.2f} GB)")
        print(
            f"largest registry model that fits {args.gpu_memory_gb:g} GB{_levers(args)}: " + _named(largest)
        )
    return 0


def _table(plan, allowance) -> list[str]:
    levers = ", ".join(
        filter(
            None,
            [
                plan.dtype,
                plan.quantize and f"--quantize {plan.quantize}",
                plan.quantize_text_encoder and f"--quantize-text-encoder {plan.quantize_text_encoder}",
                plan.offload and f"--offload {plan.offload}",
            ],
        )
    )
    lines = [
        f"{plan.model} ({levers})",
        f"  {'component':<16}{'parameters':>15}  {'precision':<11}{'placement':<20}{'GB':>7}",
    ]
    for c in plan.components:
        params = f"{c.params:,}" if c.params is not None else "unknown"
        size = f"{c.bytes / 1e9:.2f}" if c.bytes is not None else "?"
        lines.append(f"  {c.name:<16}{params:>15}  {c.precision:<11}{PLACEMENTS[c.placement]:<20}{size:>7}")
    lines.append(
        f"  weights on the GPU: {plan.weights_on_gpu() / 1e9:.2f} GB while generating"
        + (
            f", {plan.weights_while_encoding() / 1e9:.2f} GB while encoding a new prompt"
            if plan.weights_while_encoding() != plan.weights_on_gpu()
            else ""
        )
    )
    lines.append(f"  prompt cache: {plan.prompt_cache_bytes / 1e9:.2f} GB ({plan.prompt_cache_size} prompts)")
    lines.append(f"  peak with the allowance below: {plan.peak(allowance) / 1e9:.2f} GB")
    converted = sum(c.fp8_params for c in plan.components)
    if converted:
        lines.append(
            f"  fp8: {converted:,} parameters, the linear weights in the transformer's blocks and the "
            f"text encoder's layers, at 1 byte + a float32 scale per output channel; the rest "
            f"{plan.dtype}"
        )
    sources: dict[str, list[str]] = {}
    for c in plan.components:
        sources.setdefault(c.source, []).append(c.name)
    lines += [f"  {', '.join(names)}: {source}" for source, names in sources.items()]
    if plan.unknown():
        lines.append(f"  not counted: {', '.join(plan.unknown())} (size unknown)")
    return lines


def _largest_fitting(gpu: float, options: dict, allowance) -> list[ModelSpec]:
    """The registry models of the largest size that fits `gpu` bytes (one size's models share its shapes)."""
    from kleinserve.engine.memory_plan import plan_model

    sizes: dict[str, list[ModelSpec]] = {}
    for spec in REGISTRY:
        sizes.setdefault(spec.size, []).append(spec)
    fitting = []
    for specs in sizes.values():
        peak = plan_model(specs[0], **options).peak(allowance)
        if peak <= gpu:
            fitting.append((peak, specs))
    return max(fitting, key=lambda pair: pair[0])[1] if fitting else []


def _named(specs: list[ModelSpec]) -> str:
    if not specs:
        return "none"
    same = f" (same size: {', '.join(s.id for s in specs[1:])})" if len(specs) > 1 else ""
    return specs[0].id + same


def _levers(args) -> str:
    levers = [
        f"--quantize {args.quantize}" if args.quantize else "",
        f"--quantize-text-encoder {args.quantize_text_encoder}" if args.quantize_text_encoder else "",
        f"--offload {args.offload}" if args.offload else "",
    ]
    return f" with {' '.join(filter(None, levers))}" if any(levers) else ""
