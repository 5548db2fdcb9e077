"""Why nuclei are missed or false, per CV fold, and three post-processing variants (issue 13; BENCHMARKS.md §1m).

    python -m benchmarks.instance_errors cv/recipe_f32 cv/recipe_seed1 cv/recipe_seed2 [--cores distance|maxima]
                                         [--fill-holes]

For every fold of each `tnbc cv` folder: the fold's model predicts its valid and test originals with 8x TTA (as
`tnbc eval` does), the post-processing is chosen on valid by the same coordinate ascent (`evaluation/tune.py`,
AJI), and the test images are scored and their errors counted. `--cores` adds one field to that search:
  distance  `core_split` = h px: a core is split at the h-maxima of its own distance transform (0 = off), so a
            dumbbell of two touching nuclei' cores seeds two nuclei;
  maxima    `core_split` = h: the seeds are the h-maxima of the interior probability (Gaussian sigma 1) inside
            the cores (0 = off), so one core with two peaks seeds two nuclei.
`--fill-holes` adds `fill_holes` (0/1): every nucleus's holes that no other nucleus occupies become its own.
The variants live here, not in the package: on the twelve recipe models the search never chose a core split,
and hole filling, chosen on 8, moved no mean score by more than 0.0002 (§1m).
Nothing is written; one line per fold and the means are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from unittest import mock

import numpy as np
from scipy import ndimage
from skimage.morphology import h_maxima

from tnbc_pipeline.config import PostProcess
from tnbc_pipeline.evaluation import tune
from tnbc_pipeline.evaluation.metrics import contingency, image_metrics
from tnbc_pipeline.inference import postprocess as pp

GRIDS = {"distance": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0), "maxima": (0.0, 0.05, 0.1, 0.2, 0.3)}
ERRORS = ("missed", "merged", "split", "poor", "fp_spurious", "fp_other")


def error_kinds(truth: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """Truth and predicted int labels (H, W) -> counts of each kind of error at IoU > 0.5 (F1's matching).

    A true nucleus without a match is `missed` when no prediction covers 20% of it, `merged` when the one
    covering most of it also covers over 30% of another nucleus or lies less than 60% on this one, `split` when
    two or more predictions cover over 20% of it each, else `poor` (one ill-fitting prediction). An unmatched
    prediction is `fp_spurious` when under 20% of it lies on any true nucleus, else `fp_other`."""
    inter, area_t, area_p = contingency(truth, pred)
    iou = inter / np.maximum(area_t[:, None] + area_p[None, :] - inter, 1)
    counts = dict.fromkeys(ERRORS, 0)
    for i in np.nonzero(~(iou > 0.5).any(1))[0]:
        j = int(inter[i].argmax()) if area_p.size else -1
        if j < 0 or inter[i, j] < 0.2 * area_t[i]:
            counts["missed"] += 1
        elif (inter[:, j] > 0.3 * area_t).sum() >= 2 or inter[i, j] < 0.6 * area_p[j]:
            counts["merged"] += 1
        elif (inter[i] > 0.2 * area_t[i]).sum() >= 2:
            counts["split"] += 1
        else:
            counts["poor"] += 1
    for j in np.nonzero(~(iou > 0.5).any(0))[0]:
        counts["fp_spurious" if inter[:, j].sum() < 0.2 * area_p[j] else "fp_other"] += 1
    return counts


def split_cores(cores: np.ndarray, h: float) -> np.ndarray:
    """int32 core labels (H, W) -> labels with each core split at the h-maxima of its distance transform."""
    dist = ndimage.distance_transform_edt(cores > 0)
    markers, _ = ndimage.label(h_maxima(dist, h) & (cores > 0), structure=pp.EIGHT)
    return pp.seeded_watershed(-dist, markers.astype(np.int32), cores > 0, cores)


def maxima_cores(cores: np.ndarray, interior: np.ndarray, h: float) -> np.ndarray:
    """int32 core labels + interior probability float32 (H, W) -> one seed per h-maximum of the smoothed
    probability inside the cores (a core without one keeps its label)."""
    smooth = ndimage.gaussian_filter(interior.astype(np.float32), 1.0)
    markers, _ = ndimage.label(h_maxima(smooth, h) & (cores > 0), structure=pp.EIGHT)
    return pp.seeded_watershed(-smooth, markers.astype(np.int32), cores > 0, cores)


@dataclasses.dataclass(frozen=True)
class CorePost(PostProcess):
    cores: str = "distance"  # how a core is split when core_split > 0 (GRIDS)
    core_split: float = 0.0  # h of that split; 0 = the package's post-processing unchanged
    fill_holes: int = 0  # 1: fill each nucleus's holes (those no other nucleus occupies) after segmenting


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Int labels (H, W) -> the same with each label's enclosed background given to it (other labels kept)."""
    out = labels.copy()
    for i, box in enumerate(ndimage.find_objects(labels), 1):
        if box is not None:
            out[box][ndimage.binary_fill_holes(labels[box] == i) & (labels[box] == 0)] = i
    return out


def segment(probabilities: np.ndarray, channels: tuple[str, ...], post: PostProcess) -> np.ndarray:
    """`postprocess.segment`, with the cores split the `CorePost` way before they grow over the mask, and the
    nuclei's holes filled when `fill_holes`."""
    if isinstance(post, CorePost) and post.fill_holes:
        return fill_holes(segment(probabilities, channels, dataclasses.replace(post, fill_holes=0)))
    if not isinstance(post, CorePost) or post.core_split == 0 or post.instances != "interior":
        return pp.segment(probabilities, channels, post)
    mask = pp.remove_small(probabilities[..., channels.index("mask")] > post.threshold, post.min_area)
    interior = probabilities[..., channels.index("interior")]
    cores = pp.label_instances(pp.remove_small(mask & (interior > post.core_threshold), post.min_core))
    cores = split_cores(cores, post.core_split) if post.cores == "distance" else \
        maxima_cores(cores, interior, post.core_split)
    return pp.seeded_watershed(-interior.astype(np.float32), cores, mask, pp.label_instances(mask), post.orphans)


def fold(fold_dir: Path, cores: str | None,
         fill: bool = False) -> tuple[PostProcess, dict[str, float], dict[str, int]]:
    """One CV fold -> (the post-processing chosen on valid, test means, test error counts)."""
    from tnbc_pipeline.inference.predictor import RunModel

    run = RunModel(fold_dir / "run", tta=True)
    records = fold_dir / "TNBC" / "tfrecords"
    cases = {s: [(run.predict(img), truth) for img, truth, *_ in tune.examples(records, s, False)]
             for s in ("valid", "test")}
    fields = tune.searched(run, set()) + (["core_split"] if cores else []) + (["fill_holes"] if fill else [])
    # the ascent of `tnbc eval`, scoring with this module's segment and searching the added fields too
    grid = GRIDS[cores or "distance"]
    with mock.patch.object(tune, "segment", segment), \
            mock.patch.dict(tune.SEARCH, core_split=grid, fill_holes=(0, 1)):
        post, _ = tune.ascend(CorePost(instances="interior", cores=cores or "distance"), fields, cases["valid"],
                              run.channels, "aji")
    scores, errors = [], dict.fromkeys(ERRORS, 0)
    for p, truth in cases["test"]:
        labels = segment(p, run.channels, post)
        scores.append(image_metrics(truth, labels))
        for k, v in error_kinds(truth, labels).items():
            errors[k] += v
    means = {k: float(np.mean([s[k] for s in scores])) for k in ("dice", "aji", "f1", "pq", "sq")}
    return post, means, {**errors, "true": sum(s["n_true"] for s in scores), "tp": sum(s["tp"] for s in scores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cv", nargs="+", type=Path, help="tnbc cv output folders")
    parser.add_argument("--cores", choices=sorted(GRIDS), help="add this core split to the valid search")
    parser.add_argument("--fill-holes", action="store_true", help="add hole filling (on/off) to the valid search")
    args = parser.parse_args()
    rows = []
    for cv in args.cv:
        for fold_dir in sorted(cv.glob("fold[0-9]*")):
            post, means, errors = fold(fold_dir, args.cores, args.fill_holes)
            chosen = {f: getattr(post, f) for f in ("threshold", "min_area", "core_threshold", "min_core", "orphans",
                                                    "core_split", "fill_holes")}
            print(fold_dir, chosen, " ".join(f"{k}={v:.4f}" for k, v in means.items()), errors, flush=True)
            rows.append(means)
    print("mean", {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]})


if __name__ == "__main__":
    main()
