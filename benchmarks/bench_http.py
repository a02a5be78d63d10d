"""HTTP overhead benchmark: N concurrent clients against a running kleinserve, beside the same work called
on the engine directly in this process, so the server's cost is a measured ratio.

    python benchmarks/bench_http.py --tiny --clients 1 4 8 --requests 32 --size 256x256 \
        --output benchmarks/results/http-cpu-tiny.json

--tiny builds the tiny random checkpoint; --checkpoint DIR (or --model ID for the HF cache) uses real
weights. Without --url the benchmark starts `kleinserve serve` itself on a free loopback port.
For each concurrency C, the engine baseline runs the same requests in groups of C (one engine batch per
group, as the server would batch them) and encodes every image as PNG, the work the server does.
Both sides do the same work: in the "distinct prompts" rows every request has its own prompt, so neither
the server's prompt cache nor the engine's can skip the text encoder; the "one prompt, cached" rows send
one prompt throughout with a prompt cache of the server's default size on both sides (every request after
the first skips the text encoder). The server's overhead is its p50 minus the engine's, in ms and as a ratio.
Runs of the two sides are minutes apart, so on a noisy machine each row also gives the server's own stage
times for the same requests (from its /metrics): at 1 client, p50 minus the engine stages is the time spent
outside the engine (HTTP, queue, store, encode), independent of run-to-run noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.live_server import LiveServer  # the tests' server helper: one way to start and wait for a server


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from kleinserve.engine import Engine
    from kleinserve.models import resolve_model, with_local_path

    checkpoint = prepare_checkpoint(args)
    spec = resolve_model(args.model)
    if checkpoint is not None:
        spec = with_local_path(spec, checkpoint)
    width, height = (int(v) for v in args.size.split("x"))
    server = None if args.url else start_server(args, checkpoint)
    url = args.url or server.url
    try:
        engine = Engine.load(spec, device=args.device)
        cases = []
        for prompts in PROMPTS:
            for clients in args.clients:
                prompt_for = PROMPTS[prompts](clients)
                engine.prompts.cache_size = PROMPT_CACHE_SIZE if prompts == "one prompt, cached" else 0
                before = engine_stages(url)
                http = time_server(url, args, clients, width, height, prompt_for)
                http["stages_ms"] = stage_means(before, engine_stages(url))
                direct = time_engine(engine, args, clients, width, height, prompt_for)
                cases.append({"prompts": prompts, **case_row(clients, args.requests, http, direct)})
                print(json.dumps(cases[-1]), flush=True)
    finally:
        if server is not None:
            server.stop()
    report = {
        **environment(engine.device),
        "command": "python " + shlex.join(sys.argv),
        "model": spec.id,
        "checkpoint": "tiny random weights" if args.tiny else str(spec.source),
        "size": args.size,
        "steps": args.steps,
        "response_format": args.response_format,
        "cases": cases,
    }
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--model", default="flux.2-klein-4b")
    parser.add_argument("--checkpoint", type=Path, help="local checkpoint directory for --model")
    parser.add_argument("--tiny", action="store_true", help="use the tiny random-weight checkpoint")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--response-format", default="b64_json", choices=["url", "b64_json"])
    parser.add_argument("--device")
    parser.add_argument("--batch-wait-ms", type=float, help="the started server's (default: its own)")
    parser.add_argument("--output")
    return parser.parse_args(argv)


def prepare_checkpoint(args) -> Path | None:
    if args.tiny:
        from kleinserve.models import Variant
        from kleinserve.tiny import write_tiny_checkpoint

        return write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="klein-tiny-")), Variant.DISTILLED)
    return args.checkpoint.resolve() if args.checkpoint else None


def start_server(args, checkpoint: Path | None) -> LiveServer:
    """`kleinserve serve` on a free loopback port, its log in DATA_DIR/server.log; waits until /ready."""
    model = f"{args.model}={checkpoint}" if checkpoint else args.model
    # OpenAI requests are not safety-checked (no --safety-check-openai): the classifier is not on the measured
    # path, and not loading it keeps the benchmark runnable offline, without the classifier's weights.
    flags = ["--model", model, "--log-level", "warning", "--no-safety-checker"]
    if args.device:
        flags += ["--device", args.device]
    if args.batch_wait_ms is not None:
        flags += ["--batch-wait-ms", str(args.batch_wait_ms)]
    server = LiveServer(Path(tempfile.mkdtemp(prefix="kleinserve-bench-")), *flags)
    try:
        return server.start(timeout=600)  # real weights can take minutes to load
    except RuntimeError as exc:
        raise SystemExit(f"the server did not become ready: {exc}") from exc


PROMPT_CACHE_SIZE = 16  # the server's default --prompt-cache-size
PROMPTS = {  # per concurrency level, a request's prompt from its seed
    "distinct prompts": lambda clients: lambda seed: f"a lighthouse at dusk, take {clients}-{seed}",
    "one prompt, cached": lambda clients: lambda seed: "a lighthouse at dusk",
}


def time_server(url: str, args, clients: int, width: int, height: int, prompt_for) -> dict:
    body = {"size": f"{width}x{height}", "num_inference_steps": args.steps}
    body["response_format"] = args.response_format
    with httpx.Client(timeout=600) as client:
        warm_up = {**body, "seed": 0, "prompt": prompt_for(0)}
        client.post(url + "/v1/images/generations", json=warm_up).raise_for_status()

        def one(seed: int) -> float:
            start = time.perf_counter()
            response = client.post(
                url + "/v1/images/generations", json={**body, "seed": seed, "prompt": prompt_for(seed)}
            )
            response.raise_for_status()
            return time.perf_counter() - start

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = list(pool.map(one, range(1, args.requests + 1)))
        return summary(latencies, args.requests, time.perf_counter() - start)


STAGE = re.compile(r'^kleinserve_stage_seconds_(sum|count)\{model="[^"]*",stage="(\w+)"\} (\S+)$')
ENGINE_STAGES = ("text", "references", "denoise", "decode")  # per batch; the rest per job


def engine_stages(url: str) -> dict[tuple[str, str], float]:
    """The server's own per-stage histogram totals from /metrics: {(stage, "sum"|"count"): value}."""
    totals: dict[tuple[str, str], float] = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        match = STAGE.match(line)
        if match:
            key = (match[2], match[1])
            totals[key] = totals.get(key, 0.0) + float(match[3])
    return totals


def stage_means(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per observation of each stage between two scrapes (warm-up included), as the server measured
    them inside the same requests, so the server's time outside the engine needs no second run to compare."""
    means = {}
    for stage in sorted({stage for stage, _ in after}):
        count = after.get((stage, "count"), 0) - before.get((stage, "count"), 0)
        if count:
            means[stage] = round(1000 * (after[(stage, "sum")] - before.get((stage, "sum"), 0)) / count, 1)
    return means


def time_engine(engine, args, clients: int, width: int, height: int, prompt_for) -> dict:
    from kleinserve.imaging import encode_image
    from kleinserve.request import build_request

    def requests(seeds):
        return [
            build_request(engine.spec, prompt=prompt_for(seed), width=width, height=height,
                          steps=args.steps, seed=seed)
            for seed in seeds
        ]  # fmt: skip

    engine.generate(requests([0]))  # warm-up
    latencies = []
    start = time.perf_counter()
    for first in range(1, args.requests + 1, clients):
        group_start = time.perf_counter()
        seeds = range(first, min(first + clients, args.requests + 1))
        for result in engine.generate(requests(seeds)):
            encode_image(result.images[0], "png")
        latencies += [time.perf_counter() - group_start] * len(seeds)
    return summary(latencies, args.requests, time.perf_counter() - start)


def summary(latencies: list[float], images: int, wall: float) -> dict:
    ms = np.asarray(latencies) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "images_per_s": round(images / wall, 3),
    }


def case_row(clients: int, requests: int, http: dict, direct: dict) -> dict:
    return {
        "clients": clients,
        "requests": requests,
        "server": http,
        "engine": direct,
        "p50_overhead_ms": round(http["p50_ms"] - direct["p50_ms"], 1),
        "server_engine_stages_ms": round(sum(http["stages_ms"].get(s, 0) for s in ENGINE_STAGES), 1),
        "p50_latency_ratio": round(http["p50_ms"] / direct["p50_ms"], 3),
        "throughput_ratio": round(http["images_per_s"] / direct["images_per_s"], 3),
    }


def environment(device) -> dict:
    import diffusers
    import torch

    import kleinserve

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU: {cpu_name()} ({os.cpu_count()} cores), torch threads {torch.get_num_threads()}"
    return {
        "device": name,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "kleinserve": kleinserve.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
