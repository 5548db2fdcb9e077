"""Two CV folders side by side, fold by fold: an arm paired against its baseline (issue 13's ablations).

    python -m benchmarks.paired cv/recipe_seed5 cv/blur_seed5

Each folder is one `tnbc cv` output (its `cv_folds.csv`: one row per fold, scored by our metrics as that
folder's last `tnbc cv` scored it -- a folder re-scored later under other settings, such as `cv/recipe_seed3`'s
`eval_test_floor1`, is compared by its csv's scoring, not the later one). The folds must be the same patients
in both. Prints one markdown table: per fold, each metric as baseline -> arm
(difference), then the mean difference over the folds, the number the ablations' rules (BENCHMARKS.md §1o)
are stated in.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

METRICS = ("dice", "iou", "aji", "f1", "pq")
LABELS = {"dice": "Dice", "iou": "IoU", "aji": "AJI", "f1": "F1@0.5", "pq": "PQ"}


def read_folds(folder: Path) -> dict[int, dict[str, str]]:
    """fold -> its row of `folder/cv_folds.csv`."""
    with open(folder / "cv_folds.csv", newline="") as f:
        return {int(row["fold"]): row for row in csv.DictReader(f)}


def paired(base: dict[int, dict[str, str]], arm: dict[int, dict[str, str]]) -> dict[str, dict[str, float]]:
    """{"fold K": {metric: arm - base}, ..., "mean": {metric: mean difference}} over the folds both hold; a
    fold whose test patients differ is an error."""
    folds = sorted(base.keys() & arm.keys())
    if not folds:
        raise SystemExit("no fold in common")
    for k in folds:
        if base[k]["test_patients"] != arm[k]["test_patients"]:
            raise SystemExit(f"fold {k}: test patients {base[k]['test_patients']} vs {arm[k]['test_patients']}")
    out = {f"fold {k}": {m: float(arm[k][m]) - float(base[k][m]) for m in METRICS} for k in folds}
    out["mean"] = {m: sum(out[f"fold {k}"][m] for k in folds) / len(folds) for m in METRICS}
    return out


def table(base: dict[int, dict[str, str]], arm: dict[int, dict[str, str]]) -> str:
    diffs = paired(base, arm)
    lines = ["| fold (test patients) | " + " | ".join(LABELS[m] for m in METRICS) + " |",
             "|---" * (len(METRICS) + 1) + "|"]
    for k in sorted(base.keys() & arm.keys()):
        cells = [f"{float(base[k][m]):.4f} → {float(arm[k][m]):.4f} ({diffs[f'fold {k}'][m]:+.4f})" for m in METRICS]
        lines.append(f"| {k} ({base[k]['test_patients']}) | " + " | ".join(cells) + " |")
    lines.append("| **mean difference** | " + " | ".join(f"**{diffs['mean'][m]:+.4f}**" for m in METRICS) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m benchmarks.paired BASELINE_CV_DIR ARM_CV_DIR")
    print(table(read_folds(Path(argv[0])), read_folds(Path(argv[1]))))


if __name__ == "__main__":
    main(sys.argv[1:])
