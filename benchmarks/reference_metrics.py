"""A naive per-nucleus AJI / F1 / PQ, as commonly written: for every true nucleus a full-image mask and
the candidates under it, then full-image intersections and unions. The baseline `make bench-infer`
times our contingency-table implementation against."""

from __future__ import annotations

import numpy as np


def naive_instance_metrics(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    inter_sum = union_sum = 0
    used: set[int] = set()
    matched: list[float] = []
    pids = [i for i in np.unique(p) if i]
    for g in (i for i in np.unique(t) if i):
        gm = t == g
        best, best_iou, best_iu = None, 0.0, (0, 0)
        for s in (i for i in np.unique(p[gm]) if i):
            sm = p == s
            inter, union = np.count_nonzero(gm & sm), np.count_nonzero(gm | sm)
            if inter / union > best_iou:
                best, best_iou, best_iu = s, inter / union, (inter, union)
        if best is None:
            union_sum += np.count_nonzero(gm)
            continue
        inter_sum, union_sum = inter_sum + best_iu[0], union_sum + best_iu[1]
        used.add(best)
        if best_iou > 0.5:
            matched.append(best_iou)
    union_sum += sum(np.count_nonzero(p == s) for s in pids if s not in used)
    n_t = len([i for i in np.unique(t) if i])
    tp, fp, fn = len(matched), len(pids) - len(matched), n_t - len(matched)
    return {"aji": inter_sum / union_sum if union_sum else 1.0, "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            "pq": (tp / (tp + fp / 2 + fn / 2)) * (sum(matched) / tp) if tp else 0.0}
