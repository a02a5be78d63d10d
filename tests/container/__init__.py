"""Tests of kleinserve's container image, built and run with podman (README "Containers"). Not part of the CI
command (they build an image); run them with `.venv/bin/python -m pytest -q tests/container`."""
