"""Schemathesis against the server's own OpenAPI schema, on a live server: every operation of every
dialect, fuzzed within the schema (and outside it, by the coverage phase), answers with no 5xx, only
documented status codes and content types, and bodies that match the documented schemas."""

import os
import subprocess
import sys
from pathlib import Path

from kleinserve.models import Variant

from support.live_server import LiveServer

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance", "unsupported_method")  # fmt: skip
TESTS = Path(__file__).resolve().parents[1]


def test_no_operation_answers_5xx_or_off_schema(checkpoints, tmp_path):
    with LiveServer(tmp_path / "server", "--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",
                    "--batch-wait-ms", "0", "--no-warmup") as server:  # fmt: skip
        run = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "run", f"{server.url}/openapi.json",
             "--checks", ",".join(CHECKS), "--max-examples", "4", "--phases", "coverage,fuzzing",
             "--request-timeout", "120", "--seed", "7", "--no-color"],
            cwd=TESTS, env={**os.environ, "SCHEMATHESIS_HOOKS": "support.schemathesis_hooks"},
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        log = server.log()
    summary = run.stdout[-4000:]
    assert run.returncode == 0, summary + run.stderr[-2000:]
    assert " passed" in summary and "Tested: 55" in summary.replace("  ", " "), summary
    assert "Traceback" not in log
