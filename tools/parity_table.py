"""The parity table of the export matrix (tests/test_matrix.py): per model x method x bits x
placement, the worst identical-code fraction over all tensors and runtime configurations, the largest
code difference in steps, top-1 agreement (teacher-forced and free-running, worst run), the lowest code
entropy and the export's file size.

    python tools/parity_table.py [MODEL ...]      # markdown table on stdout, one row per case
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from tests.test_matrix import CASES, run_case


def main(models: list[str]) -> None:
    torch.manual_seed(0)
    print("| model | method | bits | placement | identical % (worst) | max step | top-1 forced % | top-1 free % |"
          " min entropy (bits) | file kB | verdict |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in CASES:
        name, method, bits, placement = case.values
        if models and name not in models:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            report = run_case(name, method, bits, placement, Path(tmp))
            size = (Path(tmp) / "m.onnx").stat().st_size
        w = report.worst()
        entropy = min(t.entropy_bits for r in report.runs for t in r.tensors)
        print(f"| {name} | {method} | {bits} | {placement} | {100 * w['identical']:.3f} | {w['max_step']} | "
              f"{100 * w['top1_agreement']:.2f} | {100 * w['free_top1_agreement']:.2f} | {entropy:.2f} | "
              f"{size / 1e3:.0f} | {'PASS' if report.passed else 'FAIL'} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
