"""Where each test patient's pixels go: pixel Dice, precision and recall per patient, one column per CV run.

    python -m benchmarks.patient_bias cv/rerun_seed3 cv/batch4_seed3 cv/dropout_seed3

Reads every fold's `run/eval_test/per_patient.csv` (what `tnbc eval` wrote). A patient whose precision and recall
sit on the same side in every run (all models too thin, or all too fat, against its truth) is a bias of that
patient's pixels against the others', not a model's variance: more models of the same data do not remove it.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

COLUMNS = ("dice", "precision", "recall")


def patient_rows(cv_dirs: list[Path]) -> dict[str, dict[str, list[float]]]:
    """patient -> column -> one value per CV folder, in the order given."""
    out: dict[str, dict[str, list[float]]] = {}
    for cv_dir in cv_dirs:
        for path in sorted(cv_dir.glob("fold[0-9]*/run/eval_test/per_patient.csv")):
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    for col in COLUMNS:
                        out.setdefault(row["patient"], {}).setdefault(col, []).append(float(row[col]))
    return out


if __name__ == "__main__":
    rows = patient_rows([Path(a) for a in sys.argv[1:]])
    print("| patient | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for patient, cols in sorted(rows.items()):
        print(f"| {patient} | " + " | ".join(" / ".join(f"{v:.3f}" for v in cols[c]) for c in COLUMNS) + " |")
