"""The Node packages the JS client tests use (tests/js: package.json, package-lock.json), installed once."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

JS_DIR = Path(__file__).resolve().parents[1] / "js"


def installed_node_modules() -> Path:
    """tests/js/node_modules from the pinned lock file (npm ci on first use; .ci/run installs them first)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node 20 and npm are needed for the JS client tests (Debian: apt-get install nodejs npm)")
    if not (JS_DIR / "node_modules" / ".package-lock.json").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, capture_output=True)
    return JS_DIR / "node_modules"
