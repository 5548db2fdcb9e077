"""The synthetic release: the real layout and counts, H&E-like colours, binary masks, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from tests.conftest import tree_digest
from tnbc_pipeline.data.raw import Release
from tnbc_pipeline.data.synth import PATIENT_COUNTS, synth_case, write_release


def test_layout_counts_and_determinism(release_root: Path, tmp_path: Path) -> None:
    assert release_root.name == "TNBC_NucleiSegmentation"
    assert sorted(p.name for p in release_root.iterdir()) == sorted(
        [f"Slide_{p}" for p in PATIENT_COUNTS] + [f"GT_{p}" for p in PATIENT_COUNTS] + ["identity.json"])
    assert sum(PATIENT_COUNTS.values()) == 50
    assert tree_digest(write_release(tmp_path, seed=0, size=96)) == tree_digest(release_root)
    assert tree_digest(write_release(tmp_path / "s1", seed=1, size=96)) != tree_digest(release_root)


def test_looks_like_h_and_e_with_touching_nuclei_separated() -> None:
    image, mask = synth_case(np.random.default_rng(0), size=512)
    nuclei, stroma = image[mask > 0].mean(0), image[mask == 0].mean(0)
    assert stroma[0] > stroma[1] and stroma[2] > stroma[1]  # pink: red and blue over green
    assert nuclei.sum() < 0.7 * stroma.sum() and nuclei[2] > nuclei[0]  # darker, purple-blue
    assert set(np.unique(mask)) == {0, 255}
    assert 0.06 < (mask > 0).mean() < 0.25
    labels, n = ndimage.label(mask > 0)
    assert n > 50
    filled, n_filled = ndimage.label(ndimage.binary_closing(mask > 0, iterations=1))
    assert n_filled < n  # some nuclei touch: only the one-pixel separating line keeps them apart


def test_release_loads_cleanly(release_root: Path) -> None:
    rel = Release(release_root)
    for case in rel.cases:
        image, mask, _, _ = rel.load(case)
        assert image.shape == (96, 96, 3) and mask.shape == (96, 96)
