"""Ray Serve's autoscaling policy, in-process: engine replicas follow queued plus running jobs (the
deployment on a real Ray head is in tests/live/test_ray_serve.py)."""

import time

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from kleinserve.roles.autoscaling import QUEUED, RUNNING, QueueDepthPolicy, wanted_replicas
from kleinserve.roles.ray_serve import engine_app_name

from support.postgres_server import database_url, postgres_server  # noqa: F401 (fixtures)
from support.ray_cluster import ServeStatus, ray_head  # noqa: F401 (fixture)

MODEL = "flux.2-klein-4b"
ENGINE_APP = engine_app_name(MODEL)


# The policy on its own: Ray's AutoscalingContext as Serve's controller builds it -------------------------


def context(metrics: dict[str, list[float]] | None, current: int = 1, target: int = 1) -> AutoscalingContext:
    deployment = DeploymentID(name="Engine", app_name=ENGINE_APP)
    replicas = [ReplicaID(f"r{i}", deployment) for i in range(current)]
    aggregated = None if metrics is None else {
        name: dict(zip(replicas, values, strict=True)) for name, values in metrics.items()
    }  # fmt: skip
    return AutoscalingContext(
        deployment_id=deployment, deployment_name="Engine", app_name=ENGINE_APP,
        current_num_replicas=current, target_num_replicas=target, running_replicas=replicas,
        total_num_requests=0.0, total_queued_requests=0.0, aggregated_metrics=aggregated, raw_metrics=None,
        capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=2, policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=time.time(),
        config=AutoscalingConfig(min_replicas=1, max_replicas=2),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("queued", "running", "per_replica", "wanted"),
    [(0, 0, 2, 0), (1, 0, 2, 1), (2, 0, 2, 1), (3, 0, 2, 2), (0, 3, 2, 2), (12, 4, 8, 2), (120, 0, 8, 15)],
)
def test_replicas_follow_queued_plus_running_jobs(queued, running, per_replica, wanted):
    assert wanted_replicas(queued, running, per_replica) == wanted


def test_the_policy_reads_the_queue_once_and_sums_what_replicas_run():
    policy = QueueDepthPolicy(jobs_per_replica=2)
    # Both replicas read the same queue (5 jobs) and each runs one job: 7 jobs want 4 replicas.
    assert policy(context({QUEUED: [5, 5], RUNNING: [1, 1]}, current=2, target=2)) == (4, {})
    assert policy(context({QUEUED: [0], RUNNING: [0]})) == (0, {})  # Ray clamps 0 to min_replicas


def test_without_reports_the_policy_keeps_the_target():
    policy = QueueDepthPolicy(jobs_per_replica=2)
    assert policy(context(None, current=0, target=2)) == (2, {})
    assert policy(context({}, current=0, target=1)) == (1, {})
    with pytest.raises(ValueError, match="jobs_per_replica"):
        QueueDepthPolicy(jobs_per_replica=0)
