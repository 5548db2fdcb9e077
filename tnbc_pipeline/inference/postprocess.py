"""Post-processing, pure numpy/scipy/scikit-image: a model's probabilities -> nucleus instance labels.

`segment(probabilities, channels, PostProcess)` is the one function eval, infer, cv and study call:
mask = mask probability > threshold, objects under `min_area` px removed, then touching nuclei separated
the `instances` way -- connected components, a distance-transform watershed, or one nucleus per core of
the interior channel grown over the mask; pieces of the split under `min_area` px join their neighbour.
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


def absorb_fragments(labels: np.ndarray, min_area: int) -> np.ndarray:
    """int32 (H, W) labels -> the same with every instance under `min_area` px merged into the instance it
    shares the most 8-connected border pixels with (ties: the lower label), or removed when it touches none;
    smallest first, so a piece that grew past `min_area` by taking a smaller one stays. A split can cut such a
    piece off a nucleus (a small core near its rim); kept, it is a false nucleus and the nucleus loses it."""
    if min_area <= 1 or not labels.any():
        return labels
    areas = np.bincount(labels.ravel())
    small = [int(i) for i in np.flatnonzero(areas[1:] < min_area) + 1 if areas[i]]
    if not small:
        return labels
    labels, boxes = labels.copy(), ndimage.find_objects(labels)
    box = {i: boxes[i - 1] for i in small}  # where each piece lies, grown as pieces join it
    for i in sorted(small, key=lambda i: (areas[i], i)):
        if areas[i] >= min_area:
            continue
        window = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box[i])  # its box and the 1-px ring
        sub = labels[window]  # a view: writing it relabels `labels`
        piece = sub == i
        touched = sub[ndimage.binary_dilation(piece, EIGHT) & ~piece]
        touched = touched[touched > 0]
        target = int(np.bincount(touched).argmax()) if touched.size else 0
        sub[piece] = target
        areas[target] += areas[i] if target else 0
        areas[i] = 0
        if target in box:
            box[target] = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(box[target], window))
    return labels


def segment(probabilities: np.ndarray, channels: tuple[str, ...], post: PostProcess) -> np.ndarray:
    """float32 (H, W, C) probabilities, channel i holding `channels[i]` (the model's output-channel map)
    -> int32 (H, W) nucleus labels, 0 = background."""
    if probabilities.ndim != 3 or probabilities.shape[-1] != len(channels):
        raise ValueError(f"probabilities of shape {probabilities.shape} do not match channels {channels}")
    mask = remove_small(probabilities[..., channels.index("mask")] > post.threshold, post.min_area)
    if post.instances == "interior":
        if "interior" not in channels:
            raise TnbcError("post-processing 'interior' needs a model with the interior channel "
                            "(train with model.interior > 0)")
        labels = split_by_interior(mask, probabilities[..., channels.index("interior")], post.core_threshold,
                                   post.min_core, post.orphans)
    elif post.instances == "watershed":
        labels = split_touching(mask, post.min_distance)
    else:
        return label_instances(mask)  # every component has min_area px or more already
    return absorb_fragments(labels, post.min_area) if post.absorb_fragments else labels
