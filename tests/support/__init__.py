"""What the tests share: servers they start for real (live_server, postgres_server, s3_server, ray_cluster,
scale_cluster), stand-ins for remote hosts (local_hosts), the browser (browser), the job-store contract
(store_contract), test pictures (images) and the OpenAPI fuzz run's hooks (schemathesis_hooks)."""
