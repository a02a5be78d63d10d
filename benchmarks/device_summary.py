"""The device run's last words: the measured ceilings, then one line per engine case, from the JSON files
benchmarks/device_run.sh left in a folder (finished cases only; a step stopped by its timeout left those).

    python benchmarks/device_summary.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ceilings

COLUMNS = ["file", "arch", "size", "batch", "refs", "levers", "diffusers ms", "kleinserve ms", "speed-up",
           "peak GB", "PSNR dB"]  # fmt: skip
FIELDS = ["arch", "width", "batch", "refs", "levers", "diffusers_ms", "kleinserve_ms", "speedup",
          "peak_mem_gb", "psnr_vs_diffusers_db"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    folder = Path((sys.argv[1:] if argv is None else argv)[0])
    ceiling_file = folder / "ceilings.json"
    if ceiling_file.exists():
        print("\n".join(ceilings.lines(json.loads(ceiling_file.read_text()))))
    print(" | ".join(COLUMNS))
    for path in sorted(folder.glob("engine-*.json"), key=lambda path: path.stat().st_mtime):  # step order
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            print(f"{path.name} | unreadable: {error}")
            continue
        if "attention" in report:
            print(f"{path.name} | {attention_line(report['attention'])}")
        for case in report["cases"]:
            print(case_line(path.name, case))
    return 0


def attention_line(attention: dict) -> str:
    operators = ", ".join(attention["sdpa_ops_seen"]) or "no aten SDPA operator"
    kernels = attention["attention_kernels_seen"][:3]
    return f"attention: {operators}; kernels {kernels}; compile {attention['compile']}"


def case_line(name: str, case: dict) -> str:
    if "kleinserve_ms" not in case:
        shape = f"{case['width']}² batch {case['batch']} refs {case['refs']}"
        return f"{name} | {shape}: diffusers {case['diffusers_ms']} ms, stopped before kleinserve ran"
    values = {**case, "width": f"{case['width']}x{case['height']}"}
    return " | ".join([name, *(str(values.get(field)) for field in FIELDS)])


if __name__ == "__main__":
    sys.exit(main())
