"""Score tables: per-image rows -> per_image.csv, per_patient.csv, evaluation.csv (the old format),
and the scorer `tnbc infer --masks` feeds image by image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.evaluation.metrics import image_metrics, truth_labels
from tnbc_pipeline.io import write_csv

METRICS = ("dice", "iou", "precision", "recall", "accuracy", "aji", "f1", "pq", "dq", "sq", "bce")


COUNTS = ("tp", "fp", "fn", "n_true", "n_pred")


def image_row(key: str, patient: str, op: str, m: dict[str, float], bce: float | None = None) -> dict[str, Any]:
    """One per_image.csv row from `image_metrics`' result: every metric of METRICS (bce only for a model
    with a mask probability; a peer's label images have none) and the object counts."""
    row = {"key": key, "patient": patient, "op": op, **{k: round(float(m[k]), 5) for k in METRICS if k in m}}
    if bce is not None:
        row["bce"] = round(bce, 5)
    return {**row, **{k: m[k] for k in COUNTS}}


def write_tables(folder: Path, rows: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """per_image.csv, per_patient.csv and evaluation.csv from `image_row` rows; return the means over
    images and the means over patients (the unit the split is made of)."""
    write_csv(folder / "per_image.csv", rows)
    patients = sorted({r["patient"] for r in rows})
    keys = [k for k in METRICS if k in rows[0]]
    per_patient = [{"patient": p, "images": sum(r["patient"] == p for r in rows),
                    **{k: round(float(np.mean([r[k] for r in rows if r["patient"] == p])), 5) for k in keys}}
                   for p in patients]
    write_csv(folder / "per_patient.csv", per_patient)
    means = {k: round(float(np.mean([r[k] for r in rows])), 5) for k in keys}
    write_csv(folder / "evaluation.csv", [*([{"metric": "loss", "value": means["bce"]}] if "bce" in means else []),
                                          {"metric": "binary_accuracy", "value": means["accuracy"]},
                                          *({"metric": k, "value": means[k]} for k in ("dice", "iou", "aji", "f1", "pq"))])
    return means, {k: round(float(np.mean([p[k] for p in per_patient])), 5) for k in keys}


class MaskScorer:
    """Scores `tnbc infer`'s nuclei against truth masks of the same file stems in `masks`:
    call it per image (the infer driver's `on_image`), then `write(out)` -> metrics.csv + comparison.png."""

    def __init__(self, masks: Path, shown: int = 6) -> None:
        self.masks, self.shown = Path(masks), shown
        self.rows: list[dict[str, Any]] = []
        self.grid: list[list[np.ndarray]] = []

    def __call__(self, path: Path, image: np.ndarray, labels: np.ndarray) -> None:
        from tnbc_pipeline.inference.infer import IMAGE_SUFFIXES, read_mask

        candidates = sorted(p for p in self.masks.glob(f"{path.stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not candidates:
            raise TnbcError(f"{self.masks}: no mask named {path.stem}.* for {path}")
        truth = read_mask(candidates[0])
        if truth.shape != labels.shape:
            raise TnbcError(f"{candidates[0]}: mask size {truth.shape} differs from its image {labels.shape}")
        m = image_metrics(truth_labels(truth), labels)
        self.rows.append({"image": path.name, **{k: round(float(v), 5) for k, v in m.items()}})
        if len(self.grid) < self.shown:
            self.grid.append([image, truth, labels > 0])

    def write(self, out: Path) -> None:
        from tnbc_pipeline.report import image_grid

        if self.rows:
            write_csv(Path(out) / "metrics.csv", self.rows)
            image_grid(self.grid, ["image", "truth", "prediction"], Path(out) / "comparison.png",
                       row_labels=[r["image"] for r in self.rows[: len(self.grid)]])

    def means(self, keys: tuple[str, ...] = ("dice", "aji", "f1", "pq")) -> dict[str, float]:
        return {k: float(np.mean([r[k] for r in self.rows])) for k in keys}
