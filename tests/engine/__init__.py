"""Tests that load or build the tiny random-weight model in this process; no server."""
