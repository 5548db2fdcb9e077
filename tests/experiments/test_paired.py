"""The paired table of two CV folders (benchmarks/paired.py): differences fold by fold and their mean."""

from __future__ import annotations

from pathlib import Path

import pytest

from tnbc_pipeline.io import write_csv


def _cv(folder: Path, rows: list[tuple[int, str, float]]) -> Path:
    """A cv folder whose fold k scores v (Dice, F1), v - 0.1 (IoU), v - 0.2 (AJI), v - 0.25 (PQ), in the
    columns of `tnbc cv`'s cv_folds.csv."""
    folder.mkdir()
    write_csv(folder / "cv_folds.csv", [
        {"fold": k, "test_patients": patients, "images": 3, "threshold": 0.5, "instances": "interior", "min_area": 60,
         "dice": v, "iou": v - 0.1, "aji": v - 0.2, "f1": v, "pq": v - 0.25, "precision": v, "recall": v}
        for k, patients, v in rows])
    return folder


def test_differences_per_fold_and_their_mean(tmp_path: Path) -> None:
    from benchmarks.paired import paired, read_folds, table

    base = read_folds(_cv(tmp_path / "base", [(0, "01 02", 0.80), (1, "03", 0.70)]))
    arm = read_folds(_cv(tmp_path / "arm", [(0, "01 02", 0.83), (1, "03", 0.69)]))
    diffs = paired(base, arm)
    assert diffs["fold 0"]["pq"] == pytest.approx(0.03) and diffs["fold 1"]["aji"] == pytest.approx(-0.01)
    assert diffs["mean"] == pytest.approx({m: 0.01 for m in ("dice", "iou", "aji", "f1", "pq")})
    text = table(base, arm)
    assert "| 0 (01 02) | 0.8000 → 0.8300 (+0.0300) |" in text and text.endswith("**+0.0100** |")


def test_folds_of_other_patients_are_refused(tmp_path: Path) -> None:
    from benchmarks.paired import paired, read_folds

    base = read_folds(_cv(tmp_path / "base", [(0, "01 02", 0.80)]))
    arm = read_folds(_cv(tmp_path / "arm", [(0, "01 03", 0.83)]))
    with pytest.raises(SystemExit, match="fold 0: test patients 01 02 vs 01 03"):
        paired(base, arm)
