"""Render a `bisect_calibration.py --json` file as the Markdown table BENCHMARKS.md quotes.

    python benchmarks/calibration_table.py benchmarks/bisect_calibration_aging_field.json

One row per shape and method: correctness, mean and median trial-hours, and for the fixed-duration and grid
rows their trial-hours as a multiple of bisect's (the `ratio` the calibration computed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(doc: dict) -> str:
    rows = ["| shape | method | correct | trial-h mean | median | x bisect's trial-h |", "|---|---|---|---|---|---|"]
    for shape, methods in doc["shapes"].items():
        for name, m in methods.items():
            if not isinstance(m, dict) or "correct" not in m:
                continue
            label = f"bisect ({doc['hazard_model']})" if name == "bisect" else name
            if "multiple" in m:
                label += f" m={m['multiple']:g}"
            ratio = f"{m['ratio']:.2f}" if "ratio" in m else ""
            rows.append(f"| {shape} | {label} | {m['correct']:.1%} | {m['hours']:.1f} | {m['median_hours']:.1f} | {ratio} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    doc = json.loads(Path(argv[0]).read_text())
    print(f"{doc['seeds']} seeds per shape from {doc['first_seed']}, alpha {doc['alpha']}, protocol {doc['protocol']}, "
          f"{doc['seconds']:.0f} s on {doc['machine']}\n")
    print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
