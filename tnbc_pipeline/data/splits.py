"""Assign patients (never images) to train/valid/test. Pure: patient counts + config -> split lists.

Three modes, in this order of precedence:
- explicit: any of `split.train/valid/test` given; train defaults to every unlisted patient.
- grouped k-fold (`split.folds = K`, `split.fold = I`): patients are dealt into K folds balanced by
  image count (largest first, each to the fold with fewest images; ties in seeded order); fold I is
  test, and valid patients are drawn from the rest as in the default mode.
- default: patients in a seeded random order; test takes patients, in that order, whenever adding one
  brings the test image count closer to `test_fraction` of all images (at least one patient); valid then
  does the same with `valid_fraction` among the rest; train keeps the remainder.
"""

from __future__ import annotations

import logging

import numpy as np

from tnbc_pipeline.config import SPLITS, SplitConfig
from tnbc_pipeline.errors import TnbcError

log = logging.getLogger(__name__)


def _seeded_order(patients: dict[str, int], seed: int) -> list[str]:
    ids = sorted(patients)
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]


def _closest_fill(order: list[str], patients: dict[str, int], target: float) -> list[str]:
    """Walk `order`, keeping each patient whose images bring the total closer to `target`."""
    chosen: list[str] = []
    total = 0
    for p in order:
        if not chosen and target > 0 or abs(total + patients[p] - target) < abs(total - target):
            chosen.append(p)
            total += patients[p]
    return chosen


def kfold(patients: dict[str, int], folds: int, seed: int) -> list[list[str]]:
    """Deal patients into `folds` groups balanced by image count; every patient in exactly one group."""
    if folds > len(patients):
        raise TnbcError(f"split.folds = {folds} but the release has only {len(patients)} patients")
    order = _seeded_order(patients, seed)
    order.sort(key=lambda p: -patients[p])  # stable: equal counts keep the seeded order
    groups: list[list[str]] = [[] for _ in range(folds)]
    sizes = [0] * folds
    for p in order:
        i = min(range(folds), key=lambda j: (sizes[j], j))
        groups[i].append(p)
        sizes[i] += patients[p]
    # Greedy dealing can leave the folds uneven (real counts: 14/11/13/12 images); swap or move a
    # patient between the largest and smallest fold while that narrows the spread.
    while True:
        big = max(range(folds), key=lambda j: (sizes[j], -j))
        small = min(range(folds), key=lambda j: (sizes[j], j))
        gap = sizes[big] - sizes[small]
        moves = [(a, b) for a in groups[big] for b in [None, *groups[small]]
                 if 0 < patients[a] - (patients[b] if b else 0) < gap]
        if not moves:
            break
        a, b = moves[0]
        delta = patients[a] - (patients[b] if b else 0)
        groups[big].remove(a)
        groups[small].append(a)
        if b:
            groups[small].remove(b)
            groups[big].append(b)
        sizes[big] -= delta
        sizes[small] += delta
    return [sorted(g) for g in groups]


def _explicit(patients: dict[str, int], cfg: SplitConfig) -> dict[str, list[str]]:
    for split in SPLITS:
        for p in getattr(cfg, split):
            if p not in patients:
                raise TnbcError(f"split.{split}: patient '{p}' is not in the release (patients: {', '.join(patients)})")
    listed = set(cfg.valid) | set(cfg.test)
    train = list(cfg.train) if cfg.train else [p for p in patients if p not in listed]
    unused = set(patients) - listed - set(train)
    if unused:
        log.warning("patients in no split (excluded): %s", ", ".join(sorted(unused)))
    return {"train": train, "valid": list(cfg.valid), "test": list(cfg.test)}


def assign(patients: dict[str, int], cfg: SplitConfig) -> dict[str, list[str]]:
    """patient id -> image count  =>  {"train": [...], "valid": [...], "test": [...]} (sorted ids)."""
    if not patients:
        raise TnbcError("no patients to split")
    total = sum(patients.values())
    if cfg.train or cfg.valid or cfg.test:
        result = _explicit(patients, cfg)
    else:
        if cfg.folds:
            groups = kfold(patients, cfg.folds, cfg.seed)
            test = groups[cfg.fold]
        else:
            test = _closest_fill(_seeded_order(patients, cfg.seed), patients, cfg.test_fraction * total)
        rest = [p for p in _seeded_order(patients, cfg.seed + 1) if p not in test]
        valid = _closest_fill(rest, patients, cfg.valid_fraction * total)
        result = {"train": [p for p in rest if p not in valid], "valid": valid, "test": test}
    result = {s: sorted(result[s]) for s in SPLITS}
    check_disjoint(result)
    if not result["train"]:
        raise TnbcError("split leaves no patient for train")
    return result


def check_disjoint(splits: dict[str, list[str]]) -> None:
    """The build's guard against leakage: fail if any patient appears in two splits."""
    owner: dict[str, str] = {}
    for split, ids in splits.items():
        for p in ids:
            if p in owner:
                raise TnbcError(f"patient {p} is in both {owner[p]} and {split}: refusing a leaky split")
            owner[p] = split
