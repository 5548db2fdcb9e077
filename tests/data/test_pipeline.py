"""The shared tf.data input pipeline: shapes and ranges, determinism, alignment, bad shards."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tnbc_pipeline.config import AugmentConfig, DatasetConfig, RecordsConfig
from tnbc_pipeline.data.dataset import build_dataset
from tnbc_pipeline.data.records import build_records, read_index
from tnbc_pipeline.errors import TnbcError

PATCH = 64


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory, release_root: Path) -> Path:
    out = tmp_path_factory.mktemp("pipe") / "TNBC"
    cfg = DatasetConfig(augment=AugmentConfig(rotations=(), alpha=(110.0,), sigma=(8.0,), distort=(), shrink=()))
    build_dataset(release_root, out, cfg, workers=1, progress=False)
    build_records(out, None, RecordsConfig(shard_mb=0.3), progress=False)
    return out / "tfrecords"


@pytest.fixture(scope="module")
def mask_records(tmp_path_factory: pytest.TempPathFactory, release_root: Path) -> Path:
    """Records whose images ARE their masks (as RGB): any misalignment would show as a difference."""
    raw = Path(shutil.copytree(release_root, tmp_path_factory.mktemp("maskraw") / "TNBC_NucleiSegmentation"))
    for gt in raw.glob("GT_*/*.png"):
        mask = cv2.imread(str(gt), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(raw / gt.parent.name.replace("GT_", "Slide_") / gt.name), np.dstack([mask] * 3))
    out = raw.parent / "TNBC"
    build_dataset(raw, out, DatasetConfig(augment=AugmentConfig(splits=())), workers=1, progress=False)
    build_records(out, None, RecordsConfig(shard_mb=0.1), progress=False)
    return out / "tfrecords"


def _take(records: Path, n: int, **kw) -> list[tuple[np.ndarray, np.ndarray]]:
    from tnbc_pipeline.data.pipeline import make_dataset

    ds = make_dataset(records, "train", training=True, batch_size=4, patch=PATCH, **kw)
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def test_training_batches_have_the_model_contract(records: Path) -> None:
    for x, y in _take(records, 3):
        assert x.shape == (4, PATCH, PATCH, 3) and y.shape == (4, PATCH, PATCH, 1)
        assert x.dtype == np.float32 and y.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
        assert set(np.unique(y)) <= {0.0, 1.0}


def test_interior_channel_is_the_mask_eroded_by_a_square(mask_records: Path) -> None:
    from scipy import ndimage

    from tnbc_pipeline.data.pipeline import training_target
    from tnbc_pipeline.tf_env import tf

    mask = np.zeros((1, 24, 24, 1), np.uint16)
    mask[0, 2:10, 2:20] = 65535  # two nuclei apart by a 1-px line, one touching the border
    mask[0, 11:22, 0:12] = 65535
    both = training_target(tf.constant(mask), 2).numpy()
    assert both.shape == (1, 24, 24, 2) and np.array_equal(both[..., 0], mask[..., 0] > 0)
    # Outside the image counts as unknown, not background: scipy's border_value=1.
    expected = ndimage.binary_erosion(mask[0, ..., 0], np.ones((5, 5)), border_value=1)
    assert np.array_equal(both[0, ..., 1], expected)
    assert ndimage.label(both[0, ..., 1])[1] == 2 and both[0, 9:12, 2:10, 1].max() == 0  # a 5-px margin now
    assert training_target(tf.constant(mask), 0).shape == (1, 24, 24, 1)
    for x, y in _take(mask_records, 2, interior=1):
        assert y.shape == (4, PATCH, PATCH, 2) and (y[..., 1] <= y[..., 0]).all() and y[..., 1].sum() > 0
    for x, y in _take(mask_records, 2, interior=3, interior_target="distance"):  # the stream's soft depths
        assert y.shape == (4, PATCH, PATCH, 2) and (y[..., 1] <= y[..., 0]).all()
        thirds = y[..., 1] * 3
        assert np.allclose(thirds, np.round(thirds), atol=1e-5) and np.isclose(thirds, 1.0).any()


def test_interior_of_instance_labels_splits_nuclei_that_touch_without_a_gap() -> None:
    from tnbc_pipeline.data.pipeline import training_target
    from tnbc_pipeline.tf_env import tf

    labels = np.zeros((1, 16, 16, 1), np.int32)
    labels[0, 2:12, 2:8] = 1  # two nuclei sharing an edge at column 8: one blob to a binary mask
    labels[0, 2:12, 8:14] = 2
    both = training_target(tf.constant(labels), 1).numpy()[0]
    assert np.array_equal(both[..., 0], labels[0, ..., 0] > 0)
    expected = np.zeros((16, 16), bool)
    expected[3:11, 3:7] = True  # each nucleus shrunk by one pixel on every side, its neighbour's side too
    expected[3:11, 9:13] = True
    assert np.array_equal(both[..., 1] > 0, expected)


def test_the_distance_target_is_each_pixels_depth_in_its_own_nucleus_capped() -> None:
    """Against scipy's chessboard distance transform, per nucleus (so touching labels count as each
    other's edge, and outside the image as unknown): depth = min(distance - 1, K) / K; 1 exactly on "core"."""
    from scipy import ndimage

    from tnbc_pipeline.data.pipeline import training_target
    from tnbc_pipeline.tf_env import tf

    labels = np.zeros((1, 32, 32, 1), np.int32)
    labels[0, 2:20, 2:12] = 1  # touches nucleus 2 along column 12 with no gap
    labels[0, 4:24, 12:26] = 2
    labels[0, 25:32, 0:9] = 3  # touches the image border
    for k in (1, 3, 4):
        got = training_target(tf.constant(labels), k, "distance").numpy()[0]
        expected = np.zeros((32, 32))
        for i in (1, 2, 3):
            own = labels[0, ..., 0] == i
            depth = ndimage.distance_transform_cdt(own, metric="chessboard") - 1
            expected[own] = np.minimum(depth[own], k) / k
        assert np.array_equal(got[..., 0], labels[0, ..., 0] > 0)
        np.testing.assert_allclose(got[..., 1], expected, atol=1e-6)
        core = training_target(tf.constant(labels), k, "core").numpy()[0, ..., 1]
        assert np.array_equal(got[..., 1] == 1.0, core == 1.0)
    assert sorted(np.unique(got[..., 1]).round(4)) == [0.0, 0.25, 0.5, 0.75, 1.0]  # every depth occurs


def test_the_stream_is_deterministic_for_a_seed(records: Path) -> None:
    a, b, c = _take(records, 4, seed=1), _take(records, 4, seed=1), _take(records, 4, seed=2)
    assert all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1]) for p, q in zip(a, b))
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(a, c))


def test_crop_flip_rot_keep_image_and_mask_aligned(mask_records: Path) -> None:
    batches = _take(mask_records, 12, seed=3)
    for x, y in batches:
        assert np.array_equal(np.round(x * 255), np.repeat(y * 255, 3, axis=-1))
    assert sum(float(y.mean()) for _, y in batches) > 0  # nuclei were actually in the crops


def test_patches_larger_than_the_image_are_reflect_padded(mask_records: Path) -> None:
    from tnbc_pipeline.data.pipeline import make_dataset

    x, y = next(iter(make_dataset(mask_records, "train", training=True, batch_size=2, patch=128)))
    assert x.shape == (2, 128, 128, 3)  # the images are 96 px
    assert np.array_equal(np.round(x.numpy() * 255), np.repeat(y.numpy() * 255, 3, axis=-1))


def test_augment_pair_covers_the_eight_symmetries() -> None:
    from tnbc_pipeline.data.pipeline import augment_pair
    from tnbc_pipeline.tf_env import tf

    image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1).repeat(3, -1)
    mask = image[..., :1].astype(np.uint16) + 300  # instance labels past uint8: kept exactly, aligned
    outs = set()
    for i in range(200):
        img, msk = augment_pair(tf.constant(image), tf.constant(mask), tf.constant([0, i], tf.int64), 4)
        assert img.dtype == tf.uint8 and np.array_equal(img.numpy()[..., :1].astype(np.uint16) + 300, msk.numpy())
        outs.add(img.numpy()[..., 0].tobytes())
    assert len(outs) == 8


def test_augment_pair_without_flip_rot_only_crops() -> None:
    from tnbc_pipeline.data.pipeline import augment_pair
    from tnbc_pipeline.tf_env import tf

    image = np.arange(64, dtype=np.uint8).reshape(8, 8, 1).repeat(3, -1)
    mask = (image[..., :1] % 2).astype(np.uint16) * 65535
    windows = {image[r:r + 4, c:c + 4, 0].tobytes() for r in range(5) for c in range(5)}
    outs = set()
    for i in range(100):
        img, msk = augment_pair(tf.constant(image), tf.constant(mask), tf.constant([0, i], tf.int64), 4, flip_rot=False)
        assert np.array_equal((img.numpy()[..., :1] % 2).astype(np.uint16) * 65535, msk.numpy())
        outs.add(img.numpy()[..., 0].tobytes())
    assert outs <= windows and len(outs) > 5  # random crops, never flipped or turned


def test_eval_mode_is_one_ordered_pass_with_keys(records: Path) -> None:
    from tnbc_pipeline.data.pipeline import make_dataset

    n = sum(s["records"] for s in read_index(records)["shards"] if s["split"] == "valid")
    keys = []
    for batch in make_dataset(records, "valid", training=False, batch_size=2):
        assert batch["image"].shape[1:] == (96, 96, 3) and batch["mask"].shape[1:] == (96, 96, 1)
        keys += [k.decode() for k in batch["key"].numpy()]
    assert len(keys) == len(set(keys)) == n
    again = [k.decode() for b in make_dataset(records, "valid", training=False, batch_size=2) for k in b["key"].numpy()]
    assert again == keys


def _keys(stream) -> list[str]:
    return [ex["key"].numpy().decode() for ex in stream]


def test_one_split_in_training_is_its_pass_repeated(records: Path) -> None:
    from tnbc_pipeline.data.pipeline import item_stream

    one_pass = _keys(item_stream(records, "train", training=False))
    assert _keys(item_stream(records, "train", training=True).take(2 * len(one_pass))) == one_pass * 2


def test_training_on_two_splits_draws_every_item_of_both_in_proportion(records: Path) -> None:
    from tnbc_pipeline.data.pipeline import item_stream

    train, valid, test = (set(_keys(item_stream(records, s, training=False))) for s in ("train", "valid", "test"))
    n = 20 * (len(train) + len(valid))
    drawn = _keys(item_stream(records, ("train", "valid"), training=True, seed=3).take(n))
    assert set(drawn) == train | valid  # every item of both splits, nothing of test
    assert test and not test & set(drawn)
    # each draw is valid with probability p = |valid| / |train + valid|: the count lies within 5 binomial sigmas
    p = len(valid) / (len(train) + len(valid))
    assert abs(sum(k in valid for k in drawn) - n * p) < 5 * (n * p * (1 - p)) ** 0.5
    assert _keys(item_stream(records, ("train", "valid"), training=True, seed=3).take(n)) == drawn  # seeded
    assert _keys(item_stream(records, ("train", "valid"), training=True, seed=4).take(n)) != drawn


def test_a_bad_shard_is_named_or_skipped(records: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    copy = Path(shutil.copytree(records, tmp_path / "tfrecords"))
    shards = [s for s in read_index(copy)["shards"] if s["split"] == "train"]
    assert len(shards) > 1
    bad = copy / shards[0]["file"]
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(TnbcError, match=rf"{bad.name}: .*truncated.*rerun `tnbc records`"):
        _take(copy, 1)
    with caplog.at_level(logging.WARNING):
        batches = _take(copy, 2, skip_bad=True)
    assert len(batches) == 2 and f"skipping bad shard {bad}" in caplog.text


DISTRIBUTED = """
import sys
from pathlib import Path
from tnbc_pipeline.tf_env import tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tnbc_pipeline.data.pipeline import make_dataset
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
ds = make_dataset(Path(sys.argv[1]), "train", training=True, batch_size=4, patch=32)
batch = next(iter(strategy.experimental_distribute_dataset(ds)))
shapes = [tuple(t.shape) for t in strategy.experimental_local_results(batch[0])]
print("REPLICAS", strategy.num_replicas_in_sync, shapes)
"""


def test_a_mirrored_strategy_splits_the_global_batch(records: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", DISTRIBUTED, str(records)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert "REPLICAS 2 [(2, 32, 32, 3), (2, 32, 32, 3)]" in out.stdout, out.stderr[-2000:]


def test_eval_mode_can_keep_only_some_ops(records: Path) -> None:
    from tnbc_pipeline.data.pipeline import make_dataset

    ops = [o.decode() for b in make_dataset(records, "valid", training=False, batch_size=4, ops=("original",))
           for o in b["op"].numpy()]
    everything = [o.decode() for b in make_dataset(records, "valid", training=False, batch_size=4)
                  for o in b["op"].numpy()]
    assert ops and set(ops) == {"original"} and len(ops) == everything.count("original") < len(everything)
