"""Scale-out benchmark: images/s with 1 and 2 `kleinserve worker` processes behind one `serve --role api` on
this machine, and the latency one request gains on the PostgreSQL path over the embedded SQLite one.

    python benchmarks/bench_scale.py --tiny --size 128x128 --clients 8 --requests 48 --single 20 \
        --workers 1 2 2 --threads-per-worker 2 1 2 --output benchmarks/results/scale-cpu.json

It starts everything itself on loopback: a private PostgreSQL cluster (tests/support/postgres_server.py:
needs initdb/pg_ctl), the API server and workers (tests/support/scale_cluster.py) with their images as local
files in one shared data directory, and `--role all` servers for the single-request comparison:

- sqlite: `serve --role all`, jobs in SQLite (the default);
- postgres: `serve --role all --database-url ...`, one process, jobs in PostgreSQL;
- split: `serve --role api` + one `kleinserve worker`, PostgreSQL between them.

Requests are OpenAI image generations (b64_json, so no file fetch is timed); single requests run one after
another after two warm-up requests; throughput runs --requests requests from --clients concurrent clients.
Workers on one CPU machine share its cores: give each its share with --threads-per-worker (OMP_NUM_THREADS),
or their threads oversubscribe the cores (the last run of the command above shows what that costs).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_http import environment, prepare_checkpoint, summary  # the HTTP benchmark's helpers

from support.live_server import LiveServer
from support.postgres_server import PostgresServer, find_binaries
from support.scale_cluster import Cluster

MODEL = "flux.2-klein-4b"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    checkpoint = prepare_checkpoint(args)
    root = Path(tempfile.mkdtemp(prefix="kleinserve-bench-scale-"))
    binaries = find_binaries()
    if binaries is None:
        raise SystemExit("PostgreSQL's initdb and pg_ctl are needed (apt-get install postgresql)")
    postgres = PostgresServer(binaries).start()
    try:
        latency = {mode: single_requests(mode, args, checkpoint, root, postgres) for mode in args.modes}
        threads = args.threads_per_worker or [None] * len(args.workers)
        runs = zip(args.workers, threads, strict=True)
        throughput = [throughput_with(n, t, args, checkpoint, root, postgres) for n, t in runs]
    finally:
        postgres.stop()
    report = {
        **environment(torch.device("cpu")),
        "command": "python " + shlex.join(sys.argv),
        "model": MODEL,
        "checkpoint": "tiny random weights" if args.tiny else str(checkpoint),
        "size": args.size,
        "steps": args.steps,
        "single_request": latency,
        "added_latency_ms": {
            mode: round(latency[mode]["p50_ms"] - latency["sqlite"]["p50_ms"], 1)
            for mode in latency if mode != "sqlite" and "sqlite" in latency
        },
        "throughput": throughput,
    }
    if len(throughput) > 1:  # each run's images/s over the first run's
        base = throughput[0]["images_per_s"]
        for row in throughput[1:]:
            row["speedup_over_first"] = round(row["images_per_s"] / base, 3)
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="local checkpoint directory of flux.2-klein-4b")
    parser.add_argument("--tiny", action="store_true", help="use the tiny random-weight checkpoint")
    parser.add_argument("--size", default="128x128")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for throughput")
    parser.add_argument("--requests", type=int, default=48, help="requests per throughput run")
    parser.add_argument("--single", type=int, default=20, help="one-at-a-time requests per latency mode")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads-per-worker", type=int, nargs="+",
                        help="torch threads of each worker, one value per --workers entry (OMP_NUM_THREADS; "
                        "default: torch's, all cores each)")  # fmt: skip
    parser.add_argument("--modes", nargs="*", default=["sqlite", "postgres", "split"],
                        choices=["sqlite", "postgres", "split"])  # fmt: skip
    parser.add_argument("--device")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    args.model = MODEL
    return args


def model_flags(args, checkpoint: Path | None) -> list[str]:
    flags = ["--model", f"{MODEL}={checkpoint}" if checkpoint else MODEL, "--no-safety-checker",
             "--log-level", "warning"]  # fmt: skip
    return flags + (["--device", args.device] if args.device else [])


def single_requests(mode: str, args, checkpoint, root: Path, postgres) -> dict:
    """p50/p95 of one request at a time on `mode`'s path."""
    directory = root / f"single-{mode}"
    if mode == "split":
        url = postgres.url(postgres.create_database())
        with Cluster(directory, url, workers=1, worker_flags=model_flags(args, checkpoint),
                     api_flags=["--log-level", "warning"]) as cluster:  # fmt: skip
            return time_requests(cluster.api.url, args, clients=1, count=args.single)
    flags = model_flags(args, checkpoint)
    if mode == "postgres":
        flags += ["--database-url", postgres.url(postgres.create_database())]
    with LiveServer(directory, *flags) as server:
        return time_requests(server.url, args, clients=1, count=args.single)


def throughput_with(workers: int, threads: int | None, args, checkpoint, root: Path, postgres) -> dict:
    url = postgres.url(postgres.create_database())
    shared = ["--data-dir", str(root / f"shared-{workers}")]  # one files directory for API and workers
    quiet = ["--log-level", "warning"]
    env = [{"OMP_NUM_THREADS": str(threads)} if threads else {}] * workers
    flags = model_flags(args, checkpoint)
    cluster = Cluster(root / f"throughput-{workers}", url, workers=workers, shared=shared, worker_flags=flags,
                      api_flags=quiet, worker_env=env)  # fmt: skip
    with cluster:
        timed = time_requests(cluster.api.url, args, clients=args.clients, count=args.requests)
    return {"workers": workers, "torch_threads_each": threads or "default", "clients": args.clients, **timed}


def time_requests(url: str, args, *, clients: int, count: int) -> dict:
    body = {"model": MODEL, "prompt": "a lighthouse at dusk", "size": args.size,
            "num_inference_steps": args.steps, "response_format": "b64_json"}  # fmt: skip
    with httpx.Client(timeout=600) as client:
        for seed in (0, 1):  # warm-up: first requests pay one-time costs (prompt cache, allocations)
            client.post(url + "/v1/images/generations", json={**body, "seed": seed}).raise_for_status()

        def one(seed: int) -> float:
            start = time.perf_counter()
            client.post(url + "/v1/images/generations", json={**body, "seed": seed}).raise_for_status()
            return time.perf_counter() - start

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = list(pool.map(one, range(2, count + 2)))
        return {"requests": count, **summary(latencies, count, time.perf_counter() - start)}


if __name__ == "__main__":
    sys.exit(main())
