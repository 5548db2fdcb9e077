"""Post-processing, pure numpy/scipy/scikit-image: a model's probabilities -> nucleus instance labels.

`segment(probabilities, channels, PostProcess)` is the one function eval, infer, cv and study call:
mask = mask probability > threshold, objects under `min_area` px removed, then touching nuclei separated
the `instances` way -- connected components, a distance-transform watershed, or one nucleus per core of
the interior channel grown over the mask -- and last, objects of mean mask probability under `min_score` removed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tnbc_pipeline.config import PostProcess
from tnbc_pipeline.errors import TnbcError

EIGHT = np.ones((3, 3), bool)  # 8-connectivity, as the release's nucleus count (4,028 components) uses


def label_instances(mask: np.ndarray) -> np.ndarray:
    """Binary mask -> int32 labels of its 8-connected components (touching nuclei are usually apart
    by a background line in the ground truth)."""
    labels, _ = ndimage.label(mask.astype(bool), structure=EIGHT)
    return labels.astype(np.int32)


def remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """bool (H, W): the mask without 8-connected objects of fewer than `min_area` pixels (speckles that
    would count as false nuclei; 6 of the release's 4,028 nuclei are under 30 px, the 1st percentile is 61)."""
    fg = mask.astype(bool)
    if min_area <= 1 or not fg.any():
        return fg
    labels = label_instances(fg)
    keep = np.bincount(labels.ravel()) >= min_area
    keep[0] = False
    return keep[labels]


def seeded_watershed(landscape: np.ndarray, markers: np.ndarray, fg: np.ndarray, components: np.ndarray,
                     orphans: bool = True) -> np.ndarray:
    """Watershed of `landscape` from int32 `markers` inside `fg`; a component of `fg` without any marker
    (too thin, or its seed was missed) keeps its own label instead of joining a neighbour when `orphans`,
    else it is removed (no seed: taken for a false nucleus)."""
    from skimage.segmentation import watershed

    n = int(markers.max(initial=0))
    ids, first = np.unique(components.ravel(), return_index=True)  # first pixel of every component
    orphan = np.isin(ids, components[markers > 0], invert=True) & (ids > 0)
    if not orphans:
        fg = fg & ~np.isin(components, ids[orphan])
        orphan[:] = False
    markers = markers.copy()
    markers.ravel()[first[orphan]] = np.arange(n + 1, n + 1 + int(orphan.sum()))
    return watershed(landscape, markers, mask=fg, connectivity=2).astype(np.int32)


def split_touching(mask: np.ndarray, min_distance: int = 7) -> np.ndarray:
    """Binary prediction -> int32 labels with touching nuclei split: a watershed of the negated distance
    transform from one marker per distance peak at least `min_distance` pixels apart (scikit-image)."""
    from skimage.feature import peak_local_max

    fg = mask.astype(bool)
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    dist = ndimage.distance_transform_edt(fg)
    components = label_instances(fg)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return seeded_watershed(-dist, markers, fg, components)


def split_by_interior(mask: np.ndarray, interior: np.ndarray, threshold: float = 0.5, min_seed: int = 4,
                      orphans: bool = True) -> np.ndarray:
    """Binary prediction (H, W) + the model's interior probability float32 (H, W) -> int32 labels: one
    nucleus per connected core (interior > threshold, at least `min_seed` px), grown over the mask by a
    watershed of the negated interior probability, so touching nuclei part where the cores' valley is.
    A mask object with no such core is a nucleus of its own when `orphans`, else removed."""
    fg = mask.astype(bool)
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    seeds = remove_small(fg & (interior > threshold), min_seed)
    return seeded_watershed(-interior.astype(np.float32), label_instances(seeds), fg, label_instances(fg), orphans)


def drop_doubtful(labels: np.ndarray, probability: np.ndarray, min_score: float) -> np.ndarray:
    """int32 (H, W) labels without the objects whose mean of float32 (H, W) `probability` is under `min_score`
    (their pixels become background; the other labels keep their ids)."""
    if min_score <= 0 or not labels.any():
        return labels
    ids = np.arange(1, int(labels.max()) + 1)
    keep = np.concatenate([[False], np.asarray(ndimage.mean(probability, labels, ids)) >= min_score])
    return np.where(keep[labels], labels, 0).astype(np.int32)


def segment(probabilities: np.ndarray, channels: tuple[str, ...], post: PostProcess) -> np.ndarray:
    """float32 (H, W, C) probabilities, channel i holding `channels[i]` (the model's output-channel map)
    -> int32 (H, W) nucleus labels, 0 = background."""
    if probabilities.ndim != 3 or probabilities.shape[-1] != len(channels):
        raise ValueError(f"probabilities of shape {probabilities.shape} do not match channels {channels}")
    probability = probabilities[..., channels.index("mask")]
    mask = remove_small(probability > post.threshold, post.min_area)
    if post.instances == "interior":
        if "interior" not in channels:
            raise TnbcError("post-processing 'interior' needs a model with the interior channel "
                            "(train with model.interior > 0)")
        labels = split_by_interior(mask, probabilities[..., channels.index("interior")], post.core_threshold,
                                   post.min_core, post.orphans)
    elif post.instances == "watershed":
        labels = split_touching(mask, post.min_distance)
    else:
        labels = label_instances(mask)
    return drop_doubtful(labels, probability, post.min_score)
