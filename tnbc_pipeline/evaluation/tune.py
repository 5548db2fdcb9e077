"""Choosing a run's post-processing on the valid split (as StarDist's optimize_thresholds does), or on the
valid and train originals together (`tune_on`).

The fields the user did not fix -- the mask threshold, the least object area, for models with the
interior channel the core threshold, the least core and whether a coreless object counts, and last the least
mean mask probability of a kept object -- are searched by coordinate ascent over SEARCH: each field in turn
takes the value of its grid with the highest mean criterion (default AJI) over the valid originals (or those
`tune_on` names), the others held, until a pass changes nothing (at most PASSES). Those images are predicted
once. The sweep never keeps its own edge: while the best value is the last (or first) of the values tried, the
next one past it (`beyond`) is tried too, up to the field's limit. A choice at that limit is said in one warning
line and recorded (`at_edge`).
The least area is searched only from a floor set by those images' truth (`area_floor`); a choice at the floor
is no edge.
The choice is bound to the model's sha256 and identified by everything it depends on (model, records, the
images chosen on, fixed fields, grids and the rule past them, criterion, TTA), so a changed input is chosen
again.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tnbc_pipeline import identity
from tnbc_pipeline.config import (DEFAULT_TUNE_BY, DEFAULT_TUNE_ON, PostProcess, TuneBy, TuneOn, choices, split_names,
                                  to_dict)
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.evaluation.metrics import image_metrics, pixel_metrics, truth_labels
from tnbc_pipeline.inference.postprocess import segment
from tnbc_pipeline.inference.predictor import ChosenPostProcess, RunModel

log = logging.getLogger(__name__)

THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.05, 0.951, 0.05))  # 0.2..0.8 was hit at both ends
SEARCH: dict[str, tuple[float | int, ...]] = {  # the grid of each searchable PostProcess field
    "threshold": THRESHOLDS,
    "core_threshold": tuple(round(float(t), 2) for t in np.arange(0.1, 0.91, 0.1)),  # interior models; 0.2 was hit
    "min_area": (0, 10, 20, 30, 40, 60, 80, 100, 130, 160),  # the release's 1st percentile nucleus is 61 px
    # interior models, with core_threshold: cores under this many px seed no nucleus of their own (fewer false
    # splits; BENCHMARKS.md §1g: F1 +0.013 on the 4-fold mean, every fold up)
    "min_core": (2, 4, 8, 16, 32, 64),
    # interior models: a mask object with no core kept as a nucleus or removed as a false one (BENCHMARKS.md §1h)
    "orphans": (True, False),
    # objects whose mean mask probability is under this go whole (0: none); that mean is 0.86-0.98 for most true
    # nuclei, 0.66-0.96 for most false ones (10th-90th percentiles; BENCHMARKS.md §1w)
    "min_score": (0.0, 0.7, 0.75, 0.8, 0.85, 0.9),
}
# Past a grid's end: probabilities step halfway to 0 or 1 while PROB_MARGIN or more from it (0.9 -> 0.95 ->
# 0.975), sizes double or halve within SIZE_LIMITS (64 -> 128 -> 256; min_core 2 -> 1). min_area 0 and min_score 0
# are "no removal", the true lower ends. BENCHMARKS.md §1k: core_threshold 0.9 was chosen on 3 of 8 fold models.
PROB_MARGIN = 0.04
PROBABILITIES = ("threshold", "core_threshold", "min_score")  # the fields that step halfway to 0 or 1
NO_REMOVAL = ("min_area", "min_score")  # 0 turns these off: the lower end of their range, never an edge
SIZE_LIMITS = {"min_area": (0, 1280), "min_core": (1, 256)}
BEYOND_RULE = {"prob_margin": PROB_MARGIN, "size_limits": SIZE_LIMITS}  # part of every choice's identity
# The least area is searched from a floor: this fraction of this percentile of the truth nucleus areas on the
# images it is chosen on (68-69 px on the release's folds). AJI hardly sees a small object, so its valid curve
# is flat from 0 to ~80 px and the search took 10-60 px on that noise, where F1 and PQ count every small false
# nucleus. BENCHMARKS.md §1q, paired on four models: F1 +0.005, PQ +0.004, AJI -0.0005 (half the percentile
# changed no choice).
AREA_FLOOR = {"percentile": 1.0, "fraction": 1.0}
CORE_FIELDS = ("core_threshold", "min_core", "orphans")  # searched for interior models while the user fixes none
PASSES = 3  # coordinate-ascent passes at most (two usually settle it)


def examples(records: Path, split: str, all_ops: bool):
    """(image float32 (H, W, 3), truth labels int32 (H, W) (`truth_labels` of the stored mask), key, patient,
    op) of a split, originals only unless `all_ops`."""
    from tnbc_pipeline.data.pipeline import make_dataset

    ds = make_dataset(records, split, training=False, batch_size=1, ops=() if all_ops else ("original",))
    for batch in ds:
        yield (batch["image"].numpy()[0], truth_labels(batch["labels"].numpy()[0]),
               batch["key"].numpy()[0].decode(), batch["patient"].numpy()[0].decode(), batch["op"].numpy()[0].decode())


def searched(run: RunModel, fixed_fields: set[str]) -> list[str]:
    """The fields chosen on valid: those of SEARCH the user did not fix; the core fields for interior models
    only, and none once the user gives one (`--core-threshold` alone leaves min_core and orphans at their
    defaults)."""
    cores = "interior" in run.channels and not fixed_fields & set(CORE_FIELDS)
    return [f for f in SEARCH if f not in fixed_fields and (f not in CORE_FIELDS or cores)]


def area_floor(truths: list[np.ndarray]) -> int:
    """The least area's floor in px: AREA_FLOOR's fraction of its percentile of the nucleus areas in truth label
    images (H, W) int (0 background); 0 when they hold no nucleus."""
    areas = np.concatenate([np.bincount(t.ravel().astype(np.int64))[1:] for t in truths] or [np.zeros(0, np.int64)])
    areas = areas[areas > 0]
    return int(AREA_FLOOR["fraction"] * np.percentile(areas, AREA_FLOOR["percentile"])) if areas.size else 0


def area_grid(floor: int) -> list[int]:
    """SEARCH's least areas from `floor` on: those under it become the floor itself (its first value). A floor
    above the whole grid (larger nuclei than the release's) gets its double too, so the search can go up."""
    grid = sorted({max(int(v), floor) for v in SEARCH["min_area"]})
    return grid if len(grid) > 1 else [floor, 2 * floor]


def beyond(field: str, value: float | int, up: bool, floor: int = 0) -> float | int | None:
    """The value tried after `value` when it is the best and the end of what was tried (upward if `up`), or
    None at the field's limit (and for `orphans`, a choice of two cases); min_area stops at `floor` too."""
    if field in SIZE_LIMITS:
        low, high = SIZE_LIMITS[field]
        low = max(low, floor) if field == "min_area" else low
        nxt = 2 * value if up else value // 2
        return nxt if low <= nxt <= high and nxt != value and (up or value > low) else None
    if field in PROBABILITIES:
        gap = 1 - value if up else value
        return round(value + gap / 2 if up else value / 2, 4) if gap >= PROB_MARGIN else None
    return None


def tuning_identity(run: RunModel, records_index: str, start: PostProcess, fields: list[str],
                    criterion: str, tune_on: str = DEFAULT_TUNE_ON) -> identity.Identity:
    """What a choice depends on; its digest is stored with the choice (the floor's value follows from the records,
    `tune_on` and AREA_FLOOR)."""
    held = {k: v for k, v in to_dict(start).items() if k not in fields}
    search: dict[str, Any] = {f: SEARCH[f] for f in fields}
    if "min_area" in fields:
        search["area_floor"] = AREA_FLOOR
    return identity.Identity("postprocess", {"fixed": held, "search": search,
                                             "beyond": BEYOND_RULE, "criterion": criterion, "split": tune_on,
                                             "tta": run.tta},
                             {"model": run.model_sha256, "records_index": records_index})


def score(post: PostProcess, cases: list[tuple[np.ndarray, np.ndarray]], channels: tuple[str, ...],
          criterion: str) -> float:
    """Mean `criterion` over (probabilities (H, W, C), truth labels (H, W)) cases segmented with `post`."""
    if criterion == "dice":  # pixels only: no instance matching needed
        return float(np.mean([pixel_metrics(truth > 0, segment(p, channels, post) > 0)["dice"] for p, truth in cases]))
    return float(np.mean([image_metrics(truth, segment(p, channels, post))[criterion] for p, truth in cases]))


def _key(value: float | int | bool) -> str:
    """A grid value as a scores key: 0.50 -> "0.50", 0.975 -> "0.975", 64 -> "64"."""
    if isinstance(value, float):
        return f"{value:.2f}" if round(value, 2) == value else f"{value:.4f}".rstrip("0")
    return str(value)


def ascend(start: PostProcess, fields: list[str], cases: list[tuple[np.ndarray, np.ndarray]],
           channels: tuple[str, ...], criterion: str,
           floor: int = 0) -> tuple[PostProcess, dict[str, dict[str, float]]]:
    """Coordinate ascent from `start` over SEARCH[field] for `fields`: (the best PostProcess, the criterion
    of every value of each field in the last pass, in order). Ties keep the value closest to the current one;
    a best value at the end of those tried extends them by `beyond` (kept for the later passes). The least
    area starts at and never goes below `floor` (px)."""
    grids = {f: area_grid(floor) if f == "min_area" else list(SEARCH[f]) for f in fields}
    post, scores = start, {}
    if "min_area" in fields:
        post = dataclasses.replace(post, min_area=max(post.min_area, floor))
    for _ in range(PASSES):
        before = post
        for f in fields:
            tried = {v: score(dataclasses.replace(post, **{f: v}), cases, channels, criterion) for v in grids[f]}
            current = getattr(post, f)
            while True:
                best = max(tried, key=lambda v: (round(tried[v], 6), -abs(v - current)))
                at_end = len(grids[f]) > 1 and best in (grids[f][0], grids[f][-1])
                nxt = beyond(f, best, best == grids[f][-1], floor) if at_end else None
                if nxt is None:
                    break
                grids[f] = grids[f] + [nxt] if nxt > best else [nxt] + grids[f]
                tried[nxt] = score(dataclasses.replace(post, **{f: nxt}), cases, channels, criterion)
            post = dataclasses.replace(post, **{f: best})
            scores[f] = {_key(v): round(tried[v], 4) for v in grids[f]}
        if post == before:
            break
    return post, scores


NO_EDGE = ("orphans",)  # a choice between two cases, not a range that could be too narrow


def at_edge(post: PostProcess, fields: list[str]) -> list[str]:
    """The fields chosen at their limit: at or past an end of their grid with nothing `beyond` (min_area or
    min_score 0 means no removal: not an edge)."""
    def edge(f: str, v: float | int) -> bool:
        return ((v >= SEARCH[f][-1] and beyond(f, v, True) is None)
                or (f not in NO_REMOVAL and v <= SEARCH[f][0] and beyond(f, v, False) is None))

    return [f for f in fields if f not in NO_EDGE and edge(f, getattr(post, f))]


def choose(run: RunModel, records: Path, records_index: str, start: PostProcess, fields: list[str],
           criterion: str = DEFAULT_TUNE_BY, progress: bool = True,
           tune_on: str = DEFAULT_TUNE_ON) -> ChosenPostProcess:
    """`start` with `fields` chosen on the originals of the `tune_on` splits to maximise the mean `criterion`."""
    found = [x for split in split_names(tune_on) for x in examples(records, split, False)]
    cases = [(run.predict(img), truth) for img, truth, *_ in tqdm(found, desc="post-processing", disable=not progress)]
    if not cases:
        raise TnbcError(f"{records}: no original images in {tune_on} to choose the post-processing on")
    floor = area_floor([truth for _, truth in cases]) if "min_area" in fields else 0
    post, scores = ascend(start, fields, cases, run.channels, criterion, floor)
    edges = at_edge(post, fields)
    if edges:
        log.warning("%s: %s chosen at the limit of its search; the best value may lie beyond it", run.run_dir,
                    ", ".join(f"{f}={getattr(post, f)}" for f in edges))
    log.info("%s: chose %s on %d %s images (mean %s %.4f; least area from %d px)", run.run_dir,
             ", ".join(f"{f}={getattr(post, f)}" for f in fields), len(cases), tune_on, criterion,
             score(post, cases, run.channels, criterion), floor)
    digest = tuning_identity(run, records_index, start, fields, criterion, tune_on).digest
    return ChosenPostProcess(post, run.model_sha256, digest, tune_on, f"mean {criterion}",
                             {**scores, "at_edge": edges, "area_floor": floor})


def resolve(run: RunModel, records: Path, records_index: str, overrides: dict[str, Any],
            criterion: str = DEFAULT_TUNE_BY, progress: bool = True,
            tune_on: str = DEFAULT_TUNE_ON) -> tuple[PostProcess, str, dict[str, Any]]:
    """The post-processing eval uses, where it came from, and the scores of a choice made now.

    The model's defaults with `overrides` applied; the fields not given are chosen (`searched`)
    (on the `tune_on` originals) -- reusing RUN/postprocess.json when it was chosen for exactly this (model,
    records, fixed fields, grids, criterion, images, TTA), and saving the choice there when no field was
    overridden and the criterion and images are the defaults (the run's default decision, which infer uses)."""
    from tnbc_pipeline.inference.predictor import apply_overrides

    if criterion not in choices(TuneBy):
        raise TnbcError(f"unknown tuning criterion {criterion!r} (choose from {', '.join(choices(TuneBy))})")
    if tune_on not in choices(TuneOn):
        raise TnbcError(f"unknown tuning images {tune_on!r} (choose from {', '.join(choices(TuneOn))})")
    start = run.check(apply_overrides(run.default_postprocess(), overrides))
    fields = searched(run, set(overrides))
    if not fields:
        return start, "given", {}
    wanted = tuning_identity(run, records_index, start, fields, criterion, tune_on).digest
    saved = run.saved_postprocess()
    if saved is not None and saved.tuning == wanted:
        log.info("%s: reusing the post-processing chosen on %s (%s)", run.run_dir, tune_on,
                 ", ".join(f"{f}={getattr(saved.post, f)}" for f in fields))
        return saved.post, f"postprocess.json (chosen on {tune_on})", saved.scores
    chosen = choose(run, records, records_index, start, fields, criterion, progress, tune_on)
    if not overrides and criterion == DEFAULT_TUNE_BY and tune_on == DEFAULT_TUNE_ON:
        run.save_postprocess(chosen)
    return chosen.post, f"chosen on {tune_on}", chosen.scores
