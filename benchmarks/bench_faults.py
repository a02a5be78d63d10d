"""The scaled-out roles under 20 s outages, measured: what clients see while PostgreSQL or S3 is away and what
the jobs accepted before end as once it is back (the figures in the README's failure table).

    python benchmarks/bench_faults.py --outage-s 20 --jobs 12 --output benchmarks/results/faults-cpu.json

It starts everything itself on loopback, as tests/live/test_faults.py does (that test asserts the outcomes;
this measures them at the default lease and a longer outage): a private PostgreSQL cluster, moto's S3 server
behind a TCP gate (closing the gate is the S3 outage: moto keeps its buckets in memory), one
`serve --role api` and two `kleinserve worker` processes on the tiny model (192x192, 8 steps, no safety
checker). PostgreSQL is stopped with `pg_ctl stop -m fast` and started again; the API server and workers
are never restarted.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_http import environment, prepare_checkpoint  # the HTTP benchmark's helpers

from support.fal_queue import ENDPOINT, submit
from support.postgres_server import PostgresServer, find_binaries
from support.s3_server import CREDENTIALS, PortGate
from support.scale_cluster import Cluster, started_by

BUCKET = "kleinserve-bench-faults"
BODY = {"image_size": {"width": 192, "height": 192}, "num_inference_steps": 8}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage-s", type=float, default=20.0)
    parser.add_argument("--jobs", type=int, default=12, help="fal queue jobs accepted before each outage")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    args.tiny, args.checkpoint = True, None
    checkpoint = prepare_checkpoint(args)
    postgres = PostgresServer(find_binaries()).start()
    moto, gate = start_s3()
    try:
        database = postgres.create_database()
        s3_env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{gate.port}"}
        cluster = Cluster(Path(tempfile.mkdtemp(prefix="bench-faults-")), postgres.url(database), workers=2,
                          worker_flags=["--model", f"flux.2-klein-4b={checkpoint}", "--no-warmup",
                                        "--max-batch-images", "1", "--batch-wait-ms", "0"],
                          shared=["--no-safety-checker", "--store", f"s3://{BUCKET}/images"],
                          env=s3_env)  # fmt: skip
        with cluster:
            url = cluster.api.url
            report = {
                "command": shlex.join([Path(sys.executable).name, *sys.argv]),
                **environment_cpu(),
                "lease_s": 30,
                "postgres_outage": postgres_outage(url, postgres, args),
                "s3_outage": s3_outage(url, gate, args),
            }
    finally:
        gate.close()
        moto.terminate()
        postgres.stop()
    print(json.dumps(report, indent=2))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def environment_cpu() -> dict:
    import torch

    return environment(torch.device("cpu"))


def start_s3() -> tuple[subprocess.Popen, PortGate]:
    import boto3

    from support.live_server import free_port

    port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(endpoint, timeout=2)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    client.create_bucket(Bucket=BUCKET)
    return moto, PortGate(port).open()


def accept(url: str, jobs: int, offset: int) -> list[str]:
    ids = [submit(url, {**BODY, "prompt": f"job {i}", "seed": i}) for i in range(offset, offset + jobs)]
    wait(lambda: any(job(url, job_id)["status"] == "running" for job_id in ids), 120)
    return ids


def job(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/v1/jobs/{job_id}", timeout=60).json()


def wait(condition, timeout: float) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError("timed out")
        time.sleep(0.05)
    return time.monotonic() - start


def timed(call) -> tuple[float, httpx.Response]:
    start = time.monotonic()
    answer = call()
    return (time.monotonic() - start) * 1000, answer


def outcomes(url: str, ids: list[str]) -> dict:
    records = [job(url, job_id) for job_id in ids]
    ends = [sum(1 for e in r["logs"] if e["message"] in ("succeeded", "failed")) for r in records]
    return {
        "accepted_before": len(ids),
        "succeeded": sum(r["status"] == "succeeded" for r in records),
        "recorded_ends_per_job": sorted(set(ends)),
        "attempts": dict(sorted(Counter(str(r["attempts"]) for r in records).items())),
        "workers_per_job": sorted({len(started_by(r)) for r in records}),
    }


def postgres_outage(url: str, postgres: PostgresServer, args) -> dict:
    ids = accept(url, args.jobs, 0)
    postgres.pause()
    down = time.monotonic()
    answers = []
    while time.monotonic() - down < args.outage_s:
        answers.append(("fal queue submit", *timed(lambda: httpx.post(f"{url}/queue/{ENDPOINT}",
                        json={**BODY, "prompt": "x"}, timeout=60))))  # fmt: skip
        answers.append(("openai generation", *timed(lambda: httpx.post(f"{url}/v1/images/generations",
                        json={"prompt": "x", "size": "64x64"}, timeout=60))))  # fmt: skip
        answers.append(("/ready", *timed(lambda: httpx.get(f"{url}/ready", timeout=60))))
        time.sleep(0.5)
    postgres.resume()
    back = time.monotonic()
    drained = wait(lambda: all(job(url, i)["status"] in ("succeeded", "failed") for i in ids), 600)
    return {
        "outage_s": round(back - down, 1),
        "during": answers_summary(answers),
        "all_ended_s_after_back": round(drained, 1),
        "ready_again_s_after_back": round(time.monotonic() - back, 1)
        if httpx.get(f"{url}/ready").status_code == 200 else None,
        **outcomes(url, ids),
    }  # fmt: skip


def s3_outage(url: str, gate: PortGate, args) -> dict:
    ids = accept(url, args.jobs, 100)
    gate.close()
    down = time.monotonic()
    body = {**BODY, "prompt": "inline", "sync_mode": True}
    inline = timed(lambda: httpx.post(f"{url}/{ENDPOINT}", json=body, timeout=300))
    time.sleep(max(0.0, args.outage_s - (time.monotonic() - down)))
    gate.open()
    back = time.monotonic()
    drained = wait(lambda: all(job(url, i)["status"] in ("succeeded", "failed") for i in ids), 600)
    return {
        "outage_s": round(back - down, 1),
        "inline_sync_request": {"status": inline[1].status_code, "ms": round(inline[0])},
        "all_ended_s_after_back": round(drained, 1),
        **outcomes(url, ids),
    }


def answers_summary(answers: list[tuple[str, float, httpx.Response]]) -> dict:
    summary = {}
    for kind in dict.fromkeys(kind for kind, _, _ in answers):
        mine = [(ms, answer) for name, ms, answer in answers if name == kind]
        summary[kind] = {
            "count": len(mine),
            "statuses": sorted({answer.status_code for _, answer in mine}),
            "retry_after": sorted({answer.headers.get("retry-after") for _, answer in mine}, key=str),
            "ms_p50": round(statistics.median(ms for ms, _ in mine), 1),
            "ms_max": round(max(ms for ms, _ in mine), 1),
        }
    return summary


if __name__ == "__main__":
    sys.exit(main())
