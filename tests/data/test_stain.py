"""HED stain jitter: scikit-image's colour deconvolution, identity at sigma 0, numpy and TensorFlow agree,
offline `stain` variants (mask pixel-identical, deterministic) and online jitter in the input pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tnbc_pipeline.config import AugmentConfig, DatasetConfig, RecordsConfig
from tnbc_pipeline.data import augment
from tnbc_pipeline.data.stain import EPS, HED_FROM_RGB, jitter_np, jitter_tf, stain_jitter
from tnbc_pipeline.data.synth import synth_case


def _image() -> np.ndarray:
    return synth_case(np.random.default_rng(3), size=64)[0]


def test_the_deconvolution_is_scikit_images() -> None:
    from skimage.color import rgb2hed

    image = _image()
    od = -np.log(np.maximum(image / 255.0, EPS))
    ours = np.maximum(od @ HED_FROM_RGB / -np.log(EPS), 0)  # rgb2hed scales by its log floor and clips at 0
    assert np.allclose(ours, rgb2hed(image), atol=1e-12)


def test_sigma_zero_is_the_identity_and_numpy_equals_tensorflow() -> None:
    image = _image()
    assert np.array_equal(stain_jitter(image, np.random.default_rng(0), 0.0), image)
    rgb = image / 255.0
    assert np.allclose(jitter_np(rgb, np.ones(3), np.zeros(3)), rgb, atol=1e-9)
    alpha, beta = np.array([1.1, 0.93, 1.0]), np.array([0.04, -0.02, 0.01])
    ours = jitter_np(rgb, alpha, beta)
    tf_out = np.asarray(jitter_tf(rgb.astype(np.float32), alpha.astype(np.float32), beta.astype(np.float32)))
    assert np.abs(tf_out - ours).max() < 1e-4
    # more haematoxylin darkens the nuclei (low RGB) more than the pale stroma
    darker = jitter_np(rgb, np.array([1.5, 1.0, 1.0]), np.zeros(3))
    nuclei = synth_case(np.random.default_rng(3), size=64)[1] > 0
    assert (rgb - darker)[nuclei].mean() > (rgb - darker)[~nuclei].mean() > 0


def test_offline_stain_variants_keep_the_mask_and_are_deterministic() -> None:
    image, mask = synth_case(np.random.default_rng(4), size=64)
    cfg = AugmentConfig(alpha=(), sigma=(), rotations=(), flips=False, distort=(), shrink=(), stain=(0.05, 0.2))
    plan = augment.plan_variants(cfg, "train")
    assert [v.suffix for v in plan] == ["original", "stain_0.05", "stain_0.2"]
    shifts = []
    for variant in plan[1:]:
        seed = augment.variant_seed(0, "01_1", variant)
        out, out_mask, stats = augment.apply(variant, image, mask, np.random.default_rng(seed))
        again, _, _ = augment.apply(variant, image, mask, np.random.default_rng(seed))
        assert np.array_equal(out_mask, mask) and np.array_equal(out, again) and not np.array_equal(out, image)
        assert stats["mean_abs_rgb_shift"] == pytest.approx(np.abs(out.astype(int) - image).mean())
        shifts.append(stats["mean_abs_rgb_shift"])
    assert shifts[0] < shifts[1]  # the stronger setting moves colours further
    assert augment.plan_variants(cfg, "test") == [augment.Variant("original")]


def test_the_dataset_records_stain_variants_and_their_shift(release_root: Path, tmp_path: Path) -> None:
    import json

    from tnbc_pipeline.data.dataset import build_dataset

    cfg = DatasetConfig(augment=AugmentConfig(alpha=(), sigma=(), rotations=(), flips=False, distort=(), shrink=(),
                                              stain=(0.1,)))
    build_dataset(release_root, tmp_path / "TNBC", cfg, workers=1, progress=False)
    manifest = json.loads((tmp_path / "TNBC" / "manifest.json").read_text())
    stained = [it for it in manifest["items"] if it["op"] == "stain"]
    assert stained and all(it["image"].endswith("__stain_0.1.png") for it in stained)
    originals = {it["source"]: it for it in manifest["items"] if it["op"] == "original"}
    assert all(originals[it["source"]]["mask_sha256"] == it["mask_sha256"] for it in stained)  # same mask bytes
    assert manifest["stain"][0]["sigma"] == 0.1 and manifest["stain"][0]["items"] == len(stained)
    assert manifest["stain"][0]["mean_abs_rgb_shift"] == pytest.approx(
        np.mean([it["stats"]["mean_abs_rgb_shift"] for it in stained]), abs=1e-3)


def test_online_jitter_changes_colours_only_and_is_seeded(release_root: Path, tmp_path: Path) -> None:
    from tnbc_pipeline.data.dataset import build_dataset
    from tnbc_pipeline.data.pipeline import make_dataset
    from tnbc_pipeline.data.records import build_records

    cfg = DatasetConfig(augment=AugmentConfig(alpha=(), sigma=(), rotations=(90.0,), distort=(), shrink=()))
    build_dataset(release_root, tmp_path / "TNBC", cfg, workers=1, progress=False)
    build_records(tmp_path / "TNBC", None, RecordsConfig(), progress=False)
    records = tmp_path / "TNBC" / "tfrecords"

    def batch(jitter: float, seed: int = 0):
        x, y = next(iter(make_dataset(records, "train", training=True, batch_size=4, patch=32, seed=seed,
                                      stain_jitter=jitter)))
        return x.numpy(), y.numpy()

    plain, jittered, again, other = batch(0.0), batch(0.1), batch(0.1), batch(0.1, seed=1)
    assert np.array_equal(plain[1], jittered[1])  # same crops, same masks: only colours change
    assert not np.array_equal(plain[0], jittered[0]) and np.abs(plain[0] - jittered[0]).max() < 0.5
    assert np.array_equal(jittered[0], again[0]) and not np.array_equal(jittered[0], other[0])
