"""The one-command GPU run, dry-run on CPU with shrunk shapes: it installs the carried wheels, runs every
step under its deadline, leaves at most 8 files in one flat folder and prints every case line last."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import device_summary  # noqa: E402

STEPS = ["ceilings", "4b", "9b", "9b-kv", "4b-large", "4b-fp8", "profile"]


def stand_in_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, standing in for diffusers' (which no test can download): the install
    step runs for real on it."""
    folder.mkdir()
    path = folder / "carried_probe-1.0-py3-none-any.whl"
    files = {
        "carried_probe/__init__.py": "",
        "carried_probe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: carried-probe\nVersion: 1.0\n",
        "carried_probe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "carried_probe-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in {**files, "carried_probe-1.0.dist-info/RECORD": record}.items():
            wheel.writestr(name, text)
    return folder


def device_run(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    environment = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    environment.pop("PYTHONPATH", None)
    result = subprocess.run(["bash", "benchmarks/device_run.sh", "--dry-run"], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    return result, out


def test_the_dry_run_runs_every_step_and_reports_every_case(tmp_path):
    result, out = device_run(tmp_path, WHEELS=str(stand_in_wheel(tmp_path / "wheels")))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "installing carried_probe-1.0-py3-none-any.whl" in lines[1]
    for name in STEPS:
        assert f"step {name}: ok" in result.stdout, result.stdout
    files = sorted(path.name for path in out.iterdir())
    assert len(files) <= 8 and all(path.is_file() for path in out.iterdir()), files
    assert files == ["ceilings.json", "engine-4b-fp8.json", "engine-4b-large.json", "engine-4b.json",
                     "engine-9b-kv.json", "engine-9b.json", "log.txt", "profile-4b.txt"]  # fmt: skip
    ceilings = json.loads((out / "ceilings.json").read_text())
    assert ceilings["gemm"][0]["tflops"] > 0 and ceilings["copy"]["tb_per_s"] > 0
    summary = lines[lines.index(next(line for line in lines if line.startswith("file | arch"))):]
    case_lines = [line for line in summary if " | flux.2-klein" in line]
    assert len(case_lines) == 2 + 2 + 1 + 2 + 1  # every case of every engine step, printed last
    assert lines[-1] in case_lines or lines[-1].startswith("engine-")


def test_steps_that_no_longer_fit_the_deadline_are_skipped_and_the_summary_still_comes(tmp_path):
    result, _ = device_run(tmp_path, DEADLINE_S="50", WHEELS=str(tmp_path / "none"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no wheels in" in result.stdout
    for name in STEPS[1:]:
        assert f"step {name}: SKIPPED" in result.stdout
    assert result.stdout.rstrip().endswith(" | ".join(device_summary.COLUMNS))
