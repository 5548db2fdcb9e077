"""The dataset stage end to end on the synthetic release: layout, manifest, leakage guard,
byte-identical output, incremental regeneration, atomicity under SIGKILL, and bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import make_zip, tree_digest
from tnbc_pipeline.config import AugmentConfig, DatasetConfig, SplitConfig
from tnbc_pipeline.data.dataset import build_dataset
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.io import folder_lock

ROOT = Path(__file__).resolve().parents[2]
CFG = DatasetConfig()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, release_root: Path) -> Path:
    """One default build (2 workers) shared by the read-only tests."""
    out = tmp_path_factory.mktemp("built") / "TNBC"
    build_dataset(release_root, out, CFG, workers=2, progress=False)
    return out


def test_layout_manifest_and_hashes(built: Path, release_root: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    splits = json.loads((built / "splits.json").read_text())
    assert json.loads((built / "config.json").read_text()) == manifest["config"]
    assert manifest["splits"] == splits and set(splits) == {"train", "valid", "test"}
    owner = {p: s for s, ids in splits.items() for p in ids}
    assert len(owner) == 11  # every patient in exactly one split
    assert len(manifest["sources"]) == 50
    files = {p.relative_to(built).as_posix() for p in built.rglob("*.png")}
    listed = {it[k] for it in manifest["items"] for k in ("image", "mask")}
    assert files == listed  # nothing on disk that the manifest does not list, and vice versa
    digest = tree_digest(built)
    per_source: dict[str, int] = {}
    for it in manifest["items"]:
        assert it["split"] == owner[it["patient"]] == it["image"].split("/")[0]  # augmentation after the split
        assert Path(it["image"]).name == Path(it["mask"]).name
        assert Path(it["image"]).name.startswith(it["source"] + "__")
        assert it["mask"] == it["image"].replace("/images/", "/masks/")
        assert digest[it["image"]] == it["image_sha256"] and digest[it["mask"]] == it["mask_sha256"]
        per_source[it["source"]] = per_source.get(it["source"], 0) + 1
        mask = cv2.imread(str(built / it["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}
    for key, n in per_source.items():
        split = owner[key[:2]]
        assert n == (1 if split == "test" else 22), key
    elastic = {(e["alpha"], e["sigma"]): e for e in manifest["elastic"]}
    assert set(elastic) == {(110.0, 8.0), (110.0, 10.0)}
    s8 = elastic[(110.0, 8.0)]  # ~2.9 px mean at 512 px; a little more on these 96 px images (reflected borders)
    assert 2.4 < s8["mean_disp_px"] < 3.6 and s8["p99_disp_px"] > 1.5 * s8["mean_disp_px"]
    assert elastic[(110.0, 10.0)]["mean_disp_px"] < s8["mean_disp_px"]  # smoother field, smaller shifts
    assert manifest["sources"]["01_1"]["image"] == "Slide_01/01_1.png"


def test_originals_are_the_source_pixels(built: Path, release_root: Path) -> None:
    from tnbc_pipeline.data.raw import Release

    rel = Release(release_root)
    for case in rel.cases[:5] + rel.cases[-5:]:
        image, mask, _, _ = rel.load(case)
        split = next(s for s in ("train", "valid", "test") if (built / s / "images" / f"{case.key}__original.png").exists())
        stored = cv2.imread(str(built / split / "images" / f"{case.key}__original.png"))[:, :, ::-1]
        assert np.array_equal(stored, image)
        assert np.array_equal(cv2.imread(str(built / split / "masks" / f"{case.key}__original.png"), 0), mask)


def test_byte_identical_for_any_workers_and_from_a_zip(built: Path, release_root: Path, tmp_path: Path) -> None:
    build_dataset(release_root, tmp_path / "w1", CFG, workers=1, progress=False)
    assert tree_digest(tmp_path / "w1") == tree_digest(built)
    archive = make_zip(release_root, tmp_path / "TNBC_NucleiSegmentation.zip")
    build_dataset(archive, tmp_path / "zip", CFG, workers=2, progress=False)
    assert tree_digest(tmp_path / "zip") == tree_digest(built)


def test_second_run_is_a_no_op(built: Path, release_root: Path) -> None:
    stamps = {p: p.stat().st_mtime_ns for p in built.rglob("*")}
    summary = build_dataset(release_root, built, CFG, workers=2, progress=False)
    assert not summary.changed
    assert {p: p.stat().st_mtime_ns for p in built.rglob("*")} == stamps


def test_regeneration_renders_only_changed_variants(built: Path, release_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "TNBC"
    shutil.copytree(built, out)
    (out / "tfrecords").mkdir()  # a later stage's folder inside the dataset survives rebuilds
    (out / "tfrecords" / "index.json").write_text("{}")
    before = tree_digest(out)
    cfg = dataclasses.replace(CFG, augment=AugmentConfig(sigma=(8.0, 12.0)))
    summary = build_dataset(release_root, out, cfg, workers=2, progress=False)
    after = tree_digest(out)
    sources_augmented = summary.rows["train"]["sources"] + summary.rows["valid"]["sources"]
    assert summary.changed and summary.deleted == sources_augmented
    assert sum(r["rendered"] for r in summary.rows.values()) == sources_augmented
    gone = {p for p in before if "_s10" in p}
    new = {p for p in after if "_s12" in p}
    assert len(gone) == len(new) == 2 * sources_augmented and not gone & set(after)
    unchanged = {p: h for p, h in before.items() if p not in gone and not p.endswith(".json")}
    assert {p: after[p] for p in unchanged} == unchanged  # every other file byte-identical
    assert after["tfrecords/index.json"] == before["tfrecords/index.json"]
    # The same settings from scratch give the same bytes as the incremental update.
    build_dataset(release_root, tmp_path / "fresh", cfg, workers=1, progress=False)
    assert tree_digest(tmp_path / "fresh") == {p: h for p, h in after.items() if not p.startswith("tfrecords")}


def test_force_and_a_tampered_file_rerender(built: Path, release_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "TNBC"
    shutil.copytree(built, out)
    victim = next((out / "train" / "images").glob("*__rot60.png"))
    victim.write_bytes(b"tampered")
    summary = build_dataset(release_root, out, CFG, workers=1, progress=False)
    assert sum(r["rendered"] for r in summary.rows.values()) == 1  # decided by content, not timestamps
    assert tree_digest(out) == tree_digest(built)
    summary = build_dataset(release_root, out, CFG, workers=2, force=True, progress=False)
    assert summary.rows["train"]["reused"] == 0 and tree_digest(out) == tree_digest(built)


def test_kept_files_are_trusted_by_their_stamps_and_verify_rehashes(built: Path, release_root: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tnbc_pipeline.data import manifest

    out = tmp_path / "TNBC"
    build_dataset(release_root, out, CFG, workers=2, progress=False)
    items = len(json.loads((out / "manifest.json").read_text())["items"])
    hashed: list[Path] = []
    real_hash = manifest.sha256_file
    monkeypatch.setattr(manifest, "sha256_file", lambda p: hashed.append(p) or real_hash(p))
    monkeypatch.setattr(manifest, "RACY_NS", 0)  # the build just ran: no clock tick has to pass in a test
    assert not build_dataset(release_root, out, CFG, workers=1, progress=False).changed
    assert hashed == []  # every file trusted by size, mtime and inode: nothing re-read
    # Same size, same mtime, same inode, other bytes: only --verify can see it (git's index has the same limit).
    victim = next((out / "train" / "images").glob("*__rot60.png"))
    stat = victim.stat()
    with open(victim, "r+b") as f:
        f.seek(stat.st_size // 2)
        f.write(b"\x00\x01\x02\x03")
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not build_dataset(release_root, out, CFG, workers=1, progress=False).changed
    summary = build_dataset(release_root, out, CFG, workers=1, progress=False, verify=True)
    # every file read once, but the victim's mask: its image already failed the check
    assert len(hashed) == 2 * items - 1 and sum(r["rendered"] for r in summary.rows.values()) == 1
    assert tree_digest(out) == tree_digest(built)
    # A touched file (new mtime, same bytes) is re-hashed, found intact, and nothing is written.
    hashed.clear()
    os.utime(victim)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert not build_dataset(release_root, out, CFG, workers=1, progress=False).changed
    assert hashed == [victim] and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_split_modes_reach_the_output(release_root: Path, tmp_path: Path) -> None:
    cfg = DatasetConfig(split=SplitConfig(test=("09", "10", "11"), valid=("08",)),
                        augment=AugmentConfig(splits=("train",)))
    build_dataset(release_root, tmp_path / "explicit", cfg, workers=1, progress=False)
    splits = json.loads((tmp_path / "explicit" / "splits.json").read_text())
    assert splits["test"] == ["09", "10", "11"] and splits["valid"] == ["08"]
    assert len(list((tmp_path / "explicit" / "valid" / "images").iterdir())) == 4  # originals only
    tests = []
    for fold in range(3):
        cfg = DatasetConfig(split=SplitConfig(folds=3, fold=fold), augment=AugmentConfig(splits=()))
        build_dataset(release_root, tmp_path / f"f{fold}", cfg, workers=1, progress=False)
        tests += json.loads((tmp_path / f"f{fold}" / "splits.json").read_text())["test"]
    assert sorted(tests) == [f"{i:02d}" for i in range(1, 12)]


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "GT_07" / "07_2.png").unlink(), r"Slide_07/07_2\.png: no matching mask"),
    (lambda r: (r / "Slide_08" / "08_1.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00"), r"Slide_08/08_1\.png: truncated"),
    (lambda r: cv2.imwrite(str(r / "GT_10" / "10_1.png"), np.full((96, 96), 128, np.uint8)), r"GT_10/10_1\.png: mask is not binary"),
])
def test_bad_input_writes_nothing_and_keeps_the_previous_dataset(
        built: Path, release: Path, tmp_path: Path, damage, message: str) -> None:
    out = tmp_path / "TNBC"
    shutil.copytree(built, out)
    before = tree_digest(out)
    damage(release)
    with pytest.raises(TnbcError, match=message):
        build_dataset(release, out, DatasetConfig(seed=7), workers=2, progress=False)
    assert tree_digest(out) == before
    with pytest.raises(TnbcError, match=message):
        build_dataset(release, tmp_path / "new", CFG, workers=2, progress=False)
    assert not (tmp_path / "new").exists() and not (tmp_path / ".new.partial").exists()


def test_output_overlapping_the_release_is_refused(release: Path) -> None:
    for out in (release / "out", release.parent):
        with pytest.raises(TnbcError, match="overlaps the raw release"):
            build_dataset(release, out, CFG, workers=1, progress=False)


def test_a_concurrent_run_fails_fast(release_root: Path, tmp_path: Path) -> None:
    with folder_lock(tmp_path / "TNBC"):
        with pytest.raises(TnbcError, match="another tnbc run is using this folder"):
            build_dataset(release_root, tmp_path / "TNBC", CFG, workers=1, progress=False)


def test_a_swap_cut_between_its_renames_is_recovered(built: Path, release_root: Path, tmp_path: Path) -> None:
    shutil.copytree(built, tmp_path / ".TNBC.old")  # the state a kill between the two renames leaves
    summary = build_dataset(release_root, tmp_path / "TNBC", CFG, workers=1, progress=False)
    assert not summary.changed and tree_digest(tmp_path / "TNBC") == tree_digest(built)
    assert not (tmp_path / ".TNBC.old").exists()


def _journal_lines(staging: Path) -> int:
    try:
        return len((staging / ".journal.jsonl").read_text().splitlines())
    except OSError:
        return 0


@pytest.mark.parametrize("kill_after", [1, 200])
def test_sigkill_mid_build_keeps_the_previous_dataset_and_the_rerun_completes(
        built: Path, release_root: Path, tmp_path: Path, kill_after: int) -> None:
    out = tmp_path / "TNBC"
    shutil.copytree(built, out)
    before = tree_digest(out)
    cmd = [sys.executable, "-m", "tnbc_pipeline", "-q", "dataset", "--raw", str(release_root), "--out", str(out),
           "--seed", "5", "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while _journal_lines(tmp_path / ".TNBC.partial") < kill_after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert tree_digest(out) == before  # previous dataset intact, no half-written file under a final name
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    build_dataset(release_root, tmp_path / "clean", DatasetConfig(seed=5), workers=1, progress=False)
    assert tree_digest(out) == tree_digest(tmp_path / "clean")
    assert not (tmp_path / ".TNBC.partial").exists()


def test_a_hostile_manifest_cannot_reach_outside_the_dataset(built: Path, release_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "data" / "TNBC"
    shutil.copytree(built, out)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not yours")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["items"][0]["mask"] = "../../secret.png"  # would be linked into the new version if trusted
    (out / "manifest.json").write_text(json.dumps(manifest))
    summary = build_dataset(release_root, out, CFG, workers=1, progress=False)
    assert summary.rows["train"]["reused"] == 0  # the manifest is ignored as a whole, everything re-rendered
    assert tree_digest(out) == tree_digest(built) and secret.read_bytes() == b"not yours"
