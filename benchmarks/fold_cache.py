"""A trained CV fold's TTA probabilities of its valid and test originals, computed once and kept beside it.

    python -m benchmarks.fold_cache cv/recipe_seed3 cv/recipe_seed4 cv/recipe_seed5

Post-processing probes (BENCHMARKS.md §1w) score many choices on the same probabilities; predicting the
images once per fold (8 flips/rotations, as `tnbc eval` does) makes each choice cost only its segmentation.
The cache is FOLD/run/probe_cache.npz, keyed by the model's sha256 (a retrained model is predicted again).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tnbc_pipeline.config import DEFAULT_TUNE_BY, PostProcess
from tnbc_pipeline.io import sha256_file

log = logging.getLogger(__name__)
SPLITS = ("valid", "test")
METRICS = ("dice", "iou", "aji", "f1", "pq")  # what the probes score on test
Cases = dict[str, list[tuple[np.ndarray, np.ndarray]]]  # split -> [(probabilities (H, W, C), truth labels)]
Predictor = Callable[[Any], Callable[[np.ndarray], np.ndarray]]  # a loaded RunModel -> (image -> probabilities)


def fold_cases(fold_dir: Path, arm: str = "", predictor: Predictor | None = None) -> tuple[tuple[str, ...], Cases]:
    """(the run's output-channel map, split -> [(float32 (H, W, C) probabilities, int32 truth labels)]).

    By default the TTA probabilities `tnbc eval` computes (FOLD/run/probe_cache.npz); with `arm` and
    `predictor` (the loaded run -> image -> probabilities), another way of predicting, cached in
    FOLD/run/probe_cache_{arm}.npz."""
    from tnbc_pipeline.evaluation import tune
    from tnbc_pipeline.inference.predictor import RunModel

    run_dir = fold_dir / "run"
    cache = run_dir / (f"probe_cache_{arm}.npz" if arm else "probe_cache.npz")
    sha = sha256_file(run_dir / "model.keras")
    if cache.is_file():
        data = np.load(cache)
        if str(data["sha"]) == sha:
            channels = tuple(str(c) for c in data["channels"])
            return channels, {s: list(zip(data[f"{s}_p"], data[f"{s}_t"])) for s in SPLITS}
    run, records = RunModel(run_dir, tta=True), fold_dir / "TNBC" / "tfrecords"
    predict = predictor(run) if predictor else run.predict
    cases = {s: [(predict(img), truth) for img, truth, *_ in tune.examples(records, s, False)] for s in SPLITS}
    arrays = {f"{s}_{k}": np.stack([c[i] for c in cases[s]]) for s in SPLITS for i, k in enumerate("pt")}
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, sha=sha, channels=np.array(run.channels), **arrays)
    tmp.replace(cache)
    return tuple(run.channels), cases


def chosen_on_valid(cases: Cases, channels: tuple[str, ...], fields: list[str] | None = None) -> PostProcess:
    """The post-processing `tnbc eval` would choose on `cases["valid"]`: coordinate ascent over `fields` (every
    searched field when None) by the default criterion, the least area from the valid truth's floor."""
    from tnbc_pipeline.evaluation import tune

    floor = tune.area_floor([truth for _, truth in cases["valid"]])
    return tune.ascend(PostProcess(instances="interior"), list(tune.SEARCH) if fields is None else fields,
                       cases["valid"], channels, DEFAULT_TUNE_BY, floor)[0]


def means_on_test(cases: Cases, channels: tuple[str, ...], post: PostProcess,
                  metrics: tuple[str, ...] = METRICS) -> dict[str, float]:
    """`post` applied to every test case: metric -> mean over the test images."""
    from tnbc_pipeline.evaluation.metrics import image_metrics
    from tnbc_pipeline.inference.postprocess import segment

    scores = [image_metrics(truth, segment(p, channels, post)) for p, truth in cases["test"]]
    return {m: float(np.mean([s[m] for s in scores])) for m in metrics}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    for cv_dir in map(Path, sys.argv[1:]):
        for fold in sorted(cv_dir.glob("fold[0-9]*")):
            channels, cases = fold_cases(fold)
            log.info("%s: %s", fold, {s: len(c) for s, c in cases.items()})
