"""The input pipeline shared by train, eval and bench: shards -> parsed, augmented, batched tensors.

    index.json -> shard files of a split (checked: size + sha256, bad ones named or skipped)
      -> parallel interleave -> parse + PNG decode (AUTOTUNE)
      -> training: repeat -> enumerate -> stateless augmentation seeded by (seed, element index):
         random crop to the patch, random left-right flip, random rot90 (together: all 8 symmetries)
         -> shuffle (seeded) -> batch -> prefetch
      -> evaluation: whole images in record order, with key and patient.

What the model sees is decided here, once: `model_input` (RGB, float32 in [0, 1]) and `model_target`
(float32 in {0, 1}, with `training_target`'s interior channel); eval and infer call the same functions.
Memory stays flat in the dataset size: nothing is cached, and the shuffle buffer holds crops.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tnbc_pipeline.config import InteriorTarget, choices
from tnbc_pipeline.data.blur import blur_jitter_tf
from tnbc_pipeline.data.records import read_index, shard_problem
from tnbc_pipeline.data.stain import stain_jitter_tf
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.tf_env import tf

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


def model_input(image: tf.Tensor) -> tf.Tensor:
    """uint8 RGB (..., H, W, 3) -> float32 in [0, 1]. The only place input scaling is defined."""
    return tf.cast(image, tf.float32) / 255.0


def model_target(mask: tf.Tensor) -> tf.Tensor:
    """Integer mask (..., H, W, 1), 0 = background (binary {0, 65535} or instance labels) -> float32 in {0, 1}."""
    return tf.cast(mask > 0, tf.float32)


def training_target(mask: tf.Tensor, interior: int, target: InteriorTarget = "core") -> tf.Tensor:
    """Integer masks (B, H, W, 1) as stored (uint16 from records, int32 labels) -> float32 (B, H, W, 1), or
    (B, H, W, 2) with `interior` > 0: the mask and its interior target (config.InteriorTarget).

    "core": 1 on the pixels whose (2 * interior + 1)-px square holds only their own nucleus. For a binary
    mask that is the mask eroded (min-pooling), which widens the 1-px gaps between touching nuclei into a
    margin a U-Net can learn; for instance labels it also splits nuclei that touch with no gap at all.
    "distance": each nucleus pixel's depth -- the number of k in 1..interior whose (2k + 1)-px square holds
    only its own nucleus (its Chebyshev distance to anything else, capped) -- divided by `interior`: 0 at
    the border, 1 from `interior` px in, the "core" target where it is 1. Thresholding it at t picks the
    core eroded by ceil(t * interior) px, so the erosion is chosen after training (core_threshold).
    interior = 0: the mask alone."""
    target_mask = model_target(mask)
    if interior <= 0:
        return target_mask
    labels = tf.cast(mask, tf.float32)  # labels <= 65535: exact in float32
    inside = labels > 0
    if target == "core":
        window = 2 * interior + 1
        high = tf.nn.max_pool2d(labels, window, 1, "SAME")
        low = -tf.nn.max_pool2d(-labels, window, 1, "SAME")
        interior_map = tf.cast((high == low) & inside, tf.float32)
    elif target == "distance":
        # 3x3 pooling k times = a (2k + 1)-px square: the depths of every k for the price of `interior` pools
        high, low, depth = labels, labels, tf.zeros_like(labels)
        for _ in range(interior):
            high = tf.nn.max_pool2d(high, 3, 1, "SAME")
            low = -tf.nn.max_pool2d(-low, 3, 1, "SAME")
            depth += tf.cast((high == low) & inside, tf.float32)
        interior_map = depth / interior
    else:
        raise TnbcError(f"unknown interior target {target!r} (expected {' | '.join(choices(InteriorTarget))})")
    return tf.concat([target_mask, interior_map], axis=-1)


def shard_paths(records: Path, split: str, skip_bad: bool = False) -> list[str]:
    """The split's shard files from the index, each checked (size, sha256) before anything reads it.

    A bad shard is a TnbcError naming it, or with `skip_bad` a warning and the shard left out.
    """
    records = Path(records)
    index = read_index(records)
    shards = [s for s in index["shards"] if s.get("split") == split]
    if not shards:
        raise TnbcError(f"{records / 'index.json'}: no shards for split '{split}'")
    paths = []
    for shard in shards:
        problem = shard_problem(records, shard)
        if problem is None:
            paths.append(str(records / shard["file"]))
        elif skip_bad:
            log.warning("skipping bad shard %s: %s", records / shard["file"], problem)
        else:
            raise TnbcError(f"{records / shard['file']}: {problem}; rerun `tnbc records` or skip bad shards")
    if not paths:
        raise TnbcError(f"{records}: every shard of split '{split}' is bad")
    return paths


def _records(paths: list[str], compression: str) -> tf.data.Dataset:
    files = tf.data.Dataset.from_tensor_slices(paths)
    return files.interleave(
        lambda p: tf.data.TFRecordDataset(p, compression_type="GZIP" if compression == "gzip" else ""),
        cycle_length=min(len(paths), 4), num_parallel_calls=AUTOTUNE, deterministic=True)


GROW_STEPS = 12  # reflections that take a 2-px side past 2048 px (each step: side -> 2 side - 1)


def grow_to(both: tf.Tensor, patch: int) -> tf.Tensor:
    """(H, W, C) -> at least (patch, patch, C): an image smaller than the patch (e.g. the old 640 config on
    512 tiles) is reflect-padded, centred. REFLECT pads less than a side per step, so small images are
    reflected again and again; a 1-px side is doubled first (REFLECT cannot grow it)."""
    def pad(x: tf.Tensor, amount: tf.Tensor, mode: str) -> tf.Tensor:
        return tf.pad(x, [[amount[0] // 2, amount[0] - amount[0] // 2],
                          [amount[1] // 2, amount[1] - amount[1] // 2], [0, 0]], mode=mode)

    size = tf.shape(both)[:2]
    both = pad(both, tf.where((size == 1) & (size < patch), 1, 0), "SYMMETRIC")
    for _ in range(GROW_STEPS):
        size = tf.shape(both)[:2]
        both = pad(both, tf.minimum(tf.maximum(patch - size, 0), size - 1), "REFLECT")
    return both


def augment_pair(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, patch: int,
                 flip_rot: bool = True) -> tuple[tf.Tensor, tf.Tensor]:
    """Stateless crop + flip + rot90 of image uint8 (H, W, 3) and mask uint16 (H, W, 1) as ONE uint16
    tensor, so they stay aligned and the mask keeps its exact values (labels included). `seed`: int64 (2,). `flip_rot=False`:
    the crop only (the augmentation study's "no augmentation" arm)."""
    both = grow_to(tf.concat([tf.cast(image, tf.uint16), mask], axis=-1), patch)
    crop_seed, flip_seed, rot_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    both = tf.image.stateless_random_crop(both, [patch, patch, 4], crop_seed)
    if flip_rot:
        both = tf.image.stateless_random_flip_left_right(both, flip_seed)
        both = tf.image.rot90(both, tf.random.stateless_uniform([], rot_seed, 0, 4, dtype=tf.int32))
    return tf.cast(both[..., :3], tf.uint8), both[..., 3:]


STAIN_STREAM = 7  # folded into an element's seed for its stain jitter, so crops, flips and rot90s keep theirs
BLUR_STREAM = 11  # likewise for its blur, so a crop's stain draw is the same with the blur on or off


def item_stream(records: Path, split: str | tuple[str, ...], *, training: bool, seed: int = 0,
                skip_bad: bool = False) -> tf.data.Dataset:
    """The parsed items (`schema.parse_example` dicts) of one split or several: with `training`, endless,
    drawing each item from split s with probability records(s) / records(all) when there are several
    (seeded), so that every split is spread over the whole stream; else one pass over all of them."""
    from tnbc_pipeline.data.schema import parse_example

    splits = (split,) if isinstance(split, str) else tuple(split)
    index = read_index(Path(records))
    compression = index.get("compression", "none")
    paths = {s: shard_paths(records, s, skip_bad) for s in splits}
    if training and len(splits) > 1:
        # Interleaved shards would leave the smaller split's items to one end of every pass (and so of
        # training); a seeded draw mixes them at every step, deterministically for a given seed.
        counts = [sum(e["records"] for e in index["shards"] if str(Path(records) / e["file"]) in paths[s])
                  for s in splits]
        ds = tf.data.Dataset.sample_from_datasets([_records(paths[s], compression).repeat() for s in splits],
                                                  weights=[c / sum(counts) for c in counts], seed=seed)
    else:
        ds = _records([p for s in splits for p in paths[s]], compression)
        ds = ds.repeat() if training else ds
    return ds.map(parse_example, num_parallel_calls=AUTOTUNE, deterministic=True)


def make_dataset(records: Path, split: str | tuple[str, ...], *, training: bool, batch_size: int, patch: int = 256,
                 seed: int = 0, shuffle_buffer: int = 256, skip_bad: bool = False,
                 ops: tuple[str, ...] = (), flip_rot: bool = True, interior: int = 0,
                 interior_target: InteriorTarget = "core", stain_jitter: float = 0.0,
                 blur_jitter: float = 0.0) -> tf.data.Dataset:
    """The dataset of a split, or of several (`("train", "valid")`).

    training=True: an endless stream of (image float32 (B, patch, patch, 3), mask float32
    (B, patch, patch, 1, or 2 with `interior`)) batches, deterministic for a given seed.
    training=False: one pass of {'image', 'mask', 'labels' (the truth as stored: int32 (B, H, W), 0 =
    background), 'key', 'patient', 'op'} whole images, batched by `batch_size` (images of one batch must
    share a size); `ops` keeps only items of those ops.
    `flip_rot=False` turns the training stream's random flips and rot90s off (crops stay random);
    `interior` > 0 adds the `interior_target` channel to the training masks (see `training_target`);
    `stain_jitter` > 0 jitters each training crop's stains (HED space, data/stain.py), masks untouched;
    `blur_jitter` > 0 then blurs it by a Gaussian of sigma ~ U(0, blur_jitter) px (data/blur.py).
    Several splits are read as `item_stream` reads them.
    The global batch size is given; a tf.distribute strategy splits it across replicas.
    """
    ds = item_stream(records, split, training=training, seed=seed, skip_bad=skip_bad)
    options = tf.data.Options()
    options.deterministic = True
    # Every worker reads every shard and keeps its share: correct however few shards a split has.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    if training:
        base = tf.constant(seed, tf.int64)

        def crop(index: tf.Tensor, ex: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
            element_seed = tf.stack([base, index])
            image, mask = augment_pair(ex["image"], ex["mask"], element_seed, patch, flip_rot)
            if stain_jitter > 0:
                stain_seed = tf.random.experimental.stateless_fold_in(element_seed, STAIN_STREAM)
                image = stain_jitter_tf(image, stain_seed, stain_jitter)
            if blur_jitter > 0:
                blur_seed = tf.random.experimental.stateless_fold_in(element_seed, BLUR_STREAM)
                image = blur_jitter_tf(image, blur_seed, blur_jitter)
            return image, mask

        ds = ds.enumerate().map(crop, num_parallel_calls=AUTOTUNE, deterministic=True)
        # Shuffle uint8 crops (a quarter of the float32 bytes), then batch and convert whole batches.
        ds = ds.shuffle(shuffle_buffer, seed=seed).batch(batch_size, drop_remainder=True)
        ds = ds.map(lambda x, y: (model_input(x), training_target(y, interior, interior_target)),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        if ops:
            ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex["op"], tf.constant(list(ops)))))
        ds = ds.map(lambda ex: {"image": model_input(ex["image"]), "mask": model_target(ex["mask"]),
                                "labels": tf.cast(ex["mask"][..., 0], tf.int32), "key": ex["key"], "patient": ex["patient"], "op": ex["op"]},
                    num_parallel_calls=AUTOTUNE, deterministic=True).batch(batch_size)
    return ds.prefetch(AUTOTUNE).with_options(options)
