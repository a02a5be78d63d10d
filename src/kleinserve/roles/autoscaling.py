"""How many engine replicas a model wants: enough to work through its queue in the job store.

Each engine replica reports two figures to Ray Serve (ray_serve.EngineReplica.record_autoscaling_stats): the
model's queued jobs, read from the database (every replica reads the same number), and the jobs it is running
itself. QueueDepthPolicy turns them into a replica count; Ray Serve clamps it to the deployment's
min/max replicas and holds a change back for its upscale/downscale delay. This module needs no Ray."""

from __future__ import annotations

import math

QUEUED = "queued"  # the names of the metrics an engine replica records
RUNNING = "running"


def wanted_replicas(queued: float, running: float, jobs_per_replica: int) -> int:
    """Replicas to run the jobs queued and running now, at most jobs_per_replica each (0 when idle)."""
    return math.ceil((queued + running) / jobs_per_replica)


class QueueDepthPolicy:
    """A Ray Serve custom autoscaling policy, given as
    AutoscalingPolicy(policy_function=QueueDepthPolicy, policy_kwargs={"jobs_per_replica": N}).

    Ray calls it with an AutoscalingContext on every control loop tick; it answers (replicas, policy state).
    Before any replica has reported (all starting, or all just died) it keeps the current target."""

    def __init__(self, jobs_per_replica: int):
        if jobs_per_replica < 1:
            raise ValueError(f"jobs_per_replica must be at least 1, got {jobs_per_replica}")
        self.jobs_per_replica = jobs_per_replica

    def __call__(self, ctx) -> tuple[int, dict]:
        metrics = ctx.aggregated_metrics or {}
        if QUEUED not in metrics:
            return ctx.target_num_replicas, {}
        queued = max(metrics[QUEUED].values(), default=0.0)
        running = sum(metrics.get(RUNNING, {}).values())
        return wanted_replicas(queued, running, self.jobs_per_replica), {}
