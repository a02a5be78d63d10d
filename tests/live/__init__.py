"""Tests that start real processes: a kleinserve server or the CLI, PostgreSQL, an S3 server, Ray."""
