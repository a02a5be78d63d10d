"""The control plane's capacity, measured with simulated workers: how many jobs/s one PostgreSQL and one API
server move, and so how many GPUs of a given speed they can feed (the README's "Capacity" section).

    python benchmarks/bench_capacity.py --workers 8 32 64 --engine-ms 250 --seconds 30 \
        --output benchmarks/results/capacity-cpu.json

Real parts on loopback, as tests/live/test_scale_out.py starts them: a private PostgreSQL, one
`serve --role api` and N `kleinserve worker` processes whose engine is the stand-in of
kleinserve/simulated_engine.py (KLEINSERVE_SIMULATED_ENGINE_MS: it sleeps that long per image and answers a
grey image; the batcher, job store, image store and API code are the real ones). Workers are added to the
same cluster step by step (8, then 32, then 64). At each step client threads submit small fal queue jobs
(64x64, 4 steps) for a fixed time, keeping about two jobs per worker queued; then it reads, from the job
records, the jobs finished per second, the claim latency (created -> started), the queue depth over time,
the API process's CPU seconds per request (/proc) and PostgreSQL's transactions per finished job
(pg_stat_database): the database round trips a job costs, split by statement (pg_stat_statements: the
statements run most often, as calls per finished job).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.fal_queue import ENDPOINT
from support.postgres_server import PostgresServer, find_binaries
from support.scale_cluster import Cluster, WorkerProcess

BODY = {"image_size": {"width": 64, "height": 64}, "num_inference_steps": 4}
WORKER_FLAGS = [
    "--demo",
    "--no-warmup",
    "--max-batch-images",
    "1",
    "--batch-wait-ms",
    "0",
    "--log-level",
    "warning",
]
TICKS = os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--engine-ms", type=float, default=250.0, help="simulated time per image")
    parser.add_argument("--seconds", type=float, default=30.0, help="load time at each step")
    parser.add_argument("--clients", type=int, default=8, help="client threads submitting jobs")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    postgres = PostgresServer(find_binaries(), {"shared_preload_libraries": "pg_stat_statements"}).start()
    try:
        url = postgres.url(postgres.create_database())
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        version = postgres_version(postgres)
        env = {"KLEINSERVE_SIMULATED_ENGINE_MS": str(args.engine_ms), "OMP_NUM_THREADS": "1"}
        cluster = Cluster(Path(tempfile.mkdtemp(prefix="bench-capacity-")), url, workers=args.workers[0],
                          worker_flags=WORKER_FLAGS, shared=["--no-safety-checker"],
                          api_flags=["--log-level", "warning"], env=env)  # fmt: skip
        with cluster:
            steps = []
            for workers in args.workers:
                try:
                    steps.append(measure_step(cluster, url, workers, args))
                except RuntimeError as exc:  # a worker could not start (e.g. PostgreSQL's max_connections)
                    steps.append({"workers": workers, "failed_to_start": first_fatal(str(exc))})
                    break
    finally:
        postgres.stop()
    report = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "device": "CPU only; the load generator, API server, PostgreSQL and every worker share "
        f"{os.cpu_count()} cores",
        "machine": {"cpus": os.cpu_count(), "memory_gb": round(memory_kb("MemTotal") / 2**20, 1)},
        "versions": {
            "python": platform.python_version(),
            "postgres": version,
            "psycopg": psycopg.__version__,
        },
        "engine_ms_per_image": args.engine_ms,
        "request": BODY,
        "clients": args.clients,
        "seconds_per_step": args.seconds,
        "steps": steps,
    }
    print(json.dumps(report, indent=2))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def measure_step(cluster: Cluster, url: str, workers: int, args) -> dict:
    grow(cluster, workers)
    api_pid = cluster.api.process.pid
    reset_statements(url)
    before = (cpu_seconds(api_pid), transactions(url), time.time())
    submitted, depths = load(cluster.api.url, url, workers, args)
    after = (cpu_seconds(api_pid), transactions(url), time.time())
    records = finished_between(url, before[2], after[2])
    statements = statements_per_job(url, len(records))
    claims = sorted(started - created for created, started, _ in records)
    api_cpu = after[0] - before[0]
    elapsed = after[2] - before[2]
    step = {
        "workers": workers,
        "ideal_jobs_per_s": round(workers * 1000 / args.engine_ms, 1),
        "submitted": submitted,
        "finished": len(records),
        "jobs_per_s": round(len(records) / elapsed, 2),
        "claim_ms_p50": ms(percentile(claims, 50)),
        "claim_ms_p99": ms(percentile(claims, 99)),
        "queue_depth": {"mean": round(statistics.fmean(depths), 1), "max": max(depths), "samples": depths},
        "api_cpu_s": round(api_cpu, 2),
        "api_cpu_ms_per_request": round(api_cpu * 1000 / max(submitted, 1), 2),
        "jobs_per_api_cpu_s": round(len(records) / api_cpu, 1) if api_cpu else None,
        "db_transactions_per_finished_job": round((after[1] - before[1]) / max(len(records), 1), 1),
        "db_statements_per_finished_job": statements,
        "worker_rss_mb": worker_rss_mb(cluster),
        "load_average_1m_after": round(os.getloadavg()[0], 1),  # the machine is shared: other load shows here
    }
    brief = {k: v for k, v in step.items() if k not in ("queue_depth", "db_statements_per_finished_job")}
    print(json.dumps(brief), flush=True)
    drain(url)
    return step


def grow(cluster: Cluster, workers: int) -> None:
    shared = cluster.workers[0].args
    while len(cluster.workers) < workers:
        worker = WorkerProcess(cluster.root / "workers", *shared, env=cluster.env,
                               name=f"worker-{len(cluster.workers)}")  # fmt: skip
        cluster.workers.append(worker.start())
    cluster.wait_for_workers(workers, timeout=600)


def load(api: str, url: str, workers: int, args) -> tuple[int, list[int]]:
    """Client threads submit jobs for `args.seconds`, keeping about two per worker queued."""
    end = time.monotonic() + args.seconds
    target = 2 * workers
    depth = [0]
    submitted = [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(timeout=60) as http:
            n = 0
            while time.monotonic() < end:
                if depth[0] >= target:
                    time.sleep(0.02)
                    continue
                answer = http.post(f"{api}/queue/{ENDPOINT}", json={**BODY, "prompt": f"c{i} {n}", "seed": n})
                n += 1
                if answer.status_code == 200:
                    with lock:
                        submitted[0] += 1
                        depth[0] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    depths = []
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < end:
            depth[0] = conn.execute("SELECT count(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
            depths.append(depth[0])
            time.sleep(0.5)
    for thread in threads:
        thread.join()
    return submitted[0], depths


def first_fatal(message: str) -> str:
    lines = message.splitlines()
    return next((line.strip() for line in lines if "FATAL" in line or "error:" in line), lines[0])[:400]


def drain(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(1200):
            left = conn.execute("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[
                0
            ]
            if not left:
                return
            time.sleep(0.5)


def finished_between(url: str, start: float, end: float) -> list[tuple[float, float, float]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT created_at, started_at, finished_at FROM jobs WHERE status = 'succeeded'"
            " AND finished_at BETWEEN %s AND %s",
            (start, end),
        ).fetchall()


def transactions(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        return row[0]


def reset_statements(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


def statements_per_job(url: str, jobs: int, top: int = 14) -> list[dict]:
    """The statements run most often since the reset (this benchmark's own few queries included), as calls
    per finished job; BEGIN and COMMIT show how many transactions had more than one statement."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query, calls FROM pg_stat_statements WHERE dbid ="
            " (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY calls DESC LIMIT %s",
            (top,),
        ).fetchall()
    return [{"statement": " ".join(query.split())[:160], "per_job": round(calls / max(jobs, 1), 2)}
            for query, calls in rows]  # fmt: skip


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def worker_rss_mb(cluster: Cluster) -> dict:
    sizes = []
    for worker in cluster.workers:
        for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes.append(int(line.split()[1]) / 1024)
    return {"mean": round(statistics.fmean(sizes), 1), "max": round(max(sizes), 1),
            "available_gb_after": round(memory_kb("MemAvailable") / 2**20, 1)}  # fmt: skip


def memory_kb(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def postgres_version(postgres: PostgresServer) -> str:
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        return conn.execute("SHOW server_version").fetchone()[0]


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


if __name__ == "__main__":
    sys.exit(main())
