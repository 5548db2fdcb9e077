"""Choosing a run's post-processing on the valid split (as StarDist's optimize_thresholds does).

The threshold is the one of highest mean pixel Dice on the valid originals, over THRESHOLDS, for the
other fields held fixed; the choice is bound to the model's sha256 and identified by everything it
depends on (model, valid records, fixed fields, grid, TTA), so a changed input is chosen again.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tnbc_pipeline import identity
from tnbc_pipeline.config import MASK_CHANNEL, PostProcess, to_dict
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.evaluation.metrics import pixel_metrics
from tnbc_pipeline.inference.postprocess import remove_small
from tnbc_pipeline.inference.predictor import ChosenPostProcess, RunModel

log = logging.getLogger(__name__)

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.05))  # 0.2..0.8 was hit at both ends
CRITERION = "mean pixel dice"


def examples(records: Path, split: str, all_ops: bool):
    """(image float32 (H, W, 3), truth bool (H, W), key, patient, op) of a split, originals only unless `all_ops`."""
    from tnbc_pipeline.data.pipeline import make_dataset

    ds = make_dataset(records, split, training=False, batch_size=1, ops=() if all_ops else ("original",))
    for batch in ds:
        yield (batch["image"].numpy()[0], batch["mask"].numpy()[0, ..., 0] > 0.5,
               batch["key"].numpy()[0].decode(), batch["patient"].numpy()[0].decode(), batch["op"].numpy()[0].decode())


def tuning_identity(run: RunModel, records_index: str, fixed: PostProcess) -> identity.Identity:
    """What a choice of threshold depends on; its digest is stored with the choice."""
    held = {k: v for k, v in to_dict(fixed).items() if k != "threshold"}
    return identity.Identity("postprocess", {"fixed": held, "thresholds": THRESHOLDS, "criterion": CRITERION,
                                             "split": "valid", "tta": run.tta},
                             {"model": run.model_sha256, "records_index": records_index})


def choose_threshold(run: RunModel, records: Path, records_index: str, fixed: PostProcess,
                     progress: bool = True) -> ChosenPostProcess:
    """`fixed` with the threshold of highest mean pixel Dice on the valid originals."""
    probs = [(run.predict(img)[..., MASK_CHANNEL], truth) for img, truth, *_ in
             tqdm(list(examples(records, "valid", False)), desc="threshold", disable=not progress)]
    if not probs:
        raise TnbcError(f"{records}: the valid split has no original images to choose a threshold on")
    scores = {t: float(np.mean([pixel_metrics(truth, remove_small(p > t, fixed.min_area))["dice"]
                                for p, truth in probs])) for t in THRESHOLDS}
    best = max(scores, key=lambda t: (scores[t], -abs(t - 0.5)))
    return ChosenPostProcess(dataclasses.replace(fixed, threshold=best), run.model_sha256,
                             tuning_identity(run, records_index, fixed).digest, "valid", CRITERION,
                             {f"{t:.2f}": round(s, 4) for t, s in scores.items()})


def resolve(run: RunModel, records: Path, records_index: str, overrides: dict[str, Any],
            progress: bool = True) -> tuple[PostProcess, str, dict[str, Any]]:
    """The post-processing eval uses, where it came from, and the scores of a choice made now.

    The model's defaults with `overrides` applied; a given threshold is used as is, else the threshold is
    chosen on valid -- reusing RUN/postprocess.json when it was chosen for exactly this (model, records,
    fixed fields, TTA), and saving the choice there when no field was overridden (the run's default
    decision, which infer uses)."""
    from tnbc_pipeline.inference.predictor import apply_overrides

    fixed = run.check(apply_overrides(run.default_postprocess(), overrides))
    if "threshold" in overrides:
        return fixed, "given", {}
    wanted = tuning_identity(run, records_index, fixed).digest
    saved = run.saved_postprocess()
    if saved is not None and saved.tuning == wanted:
        log.info("%s: reusing the post-processing chosen on valid (threshold %.2f)", run.run_dir, saved.post.threshold)
        return saved.post, "postprocess.json (chosen on valid)", saved.scores
    chosen = choose_threshold(run, records, records_index, fixed, progress)
    if not overrides:
        run.save_postprocess(chosen)
    return chosen.post, "chosen on valid", chosen.scores
