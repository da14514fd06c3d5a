"""The MTIL table of an `eval --sessions` JSON report as markdown, in the ConDU paper's layout (a row per method and
metric, a column per task, then the average): how the tables in RESULTS.md were made.

    .venv/bin/python benchmarks/mtil_markdown.py runs/condu-mtil-full/mtil.json [--title 'full fine-tuning']
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def markdown(report: dict) -> str:
    tasks = report["tasks"]
    lines = [
        "| | method | " + " | ".join(tasks) + " | Average |",
        "|---|---|" + "---:|" * (len(tasks) + 1),
    ]
    for row in report["columns"]:
        lines.append(
            f"| | {row['model']} | " + " | ".join(f"{v:.1f}" for v in row["accuracy"]) + f" | {row['mean']:.1f} |"
        )
    for metric in ("transfer", "average", "last"):
        for index, method in enumerate(report["methods"]):
            values = ["–" if v is None else f"{v:.1f}" for v in method[metric]]
            mean = method[f"{metric}_mean"]
            label = metric.title() if index == 0 else ""
            lines.append(f"| {label} | {method['method']} | " + " | ".join(values) + f" | **{mean:.1f}** |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path)
    args = parser.parse_args()
    print(markdown(json.loads(args.report.read_text())))


if __name__ == "__main__":
    main()
