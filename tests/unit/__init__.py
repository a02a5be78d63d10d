"""In-process tests: no model weights, no server (the fast subset, `pytest -m unit`)."""
