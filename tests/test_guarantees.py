"""Cross-cutting guarantees (issue 7): OS failures are one-line errors with previous outputs intact,
every stage refuses a concurrent run on its output, records survive SIGKILL, and parsers of untrusted
bytes fail only with the project's error type."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import tree_digest
from tnbc_pipeline.cli import main
from tnbc_pipeline.config import AugmentConfig, DatasetConfig, ModelConfig, RecordsConfig, TrainConfig
from tnbc_pipeline.data.dataset import build_dataset
from tnbc_pipeline.data.records import build_records, verify_records
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.io import decode_image, decode_mask, folder_lock, png_header

ROOT = Path(__file__).resolve().parents[1]
SMALL = DatasetConfig(augment=AugmentConfig(rotations=(90.0,), alpha=(), sigma=(), distort=(), shrink=()))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, release_root: Path) -> Path:
    out = tmp_path_factory.mktemp("guarantees") / "TNBC"
    build_dataset(release_root, out, SMALL, workers=1, progress=False)
    build_records(out, None, RecordsConfig(shard_mb=0.2), progress=False)
    return out


def test_a_file_where_the_output_folder_should_be_is_one_line(release_root: Path, tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file")
    result = CliRunner().invoke(main, ["-q", "dataset", "--raw", str(release_root), "--out",
                                       str(tmp_path / "blocker" / "TNBC"), "--workers", "1"])
    assert result.exit_code == 1
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "blocker" in lines[0], result.output


def test_disk_full_mid_build_is_clear_and_keeps_the_previous_dataset(dataset: Path, release_root: Path,
                                                                    tmp_path: Path, monkeypatch) -> None:
    out = Path(shutil.copytree(dataset, tmp_path / "TNBC"))
    before = tree_digest(out)
    real_replace, calls = os.replace, [0]

    def full_disk(src, dst, *a, **kw):
        calls[0] += 1
        if calls[0] > 5:  # a few files land, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(TnbcError, match="No space left on device"):
        build_dataset(release_root, out, DatasetConfig(seed=3, augment=SMALL.augment), workers=1, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert tree_digest(out) == before


@pytest.mark.parametrize("stage", ["records", "train"])
def test_every_stage_refuses_a_concurrent_run(dataset: Path, tmp_path: Path, stage: str) -> None:
    if stage == "records":
        target, call = dataset / "tfrecords", lambda: build_records(dataset, None, RecordsConfig(), force=True, progress=False)
    else:
        from tnbc_pipeline.model.train import train

        target = tmp_path / "run"
        cfg = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, patch=32, model=ModelConfig(levels=2, base_filters=2))
        call = lambda: train(dataset / "tfrecords", target, cfg, progress=False)  # noqa: E731
    with folder_lock(target):
        with pytest.raises(TnbcError, match="another tnbc run is using this folder"):
            call()


def _staged_shards(dataset: Path) -> int:
    """Shards the running build has finished in its staging folder (a sibling of tfrecords/)."""
    try:
        return len(list((dataset / ".tfrecords.partial").glob("*.tfrecord")))
    except OSError:
        return 0


def test_sigkill_during_records_keeps_the_shards_and_the_rerun_is_identical(release_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "TNBC"
    build_dataset(release_root, data, DatasetConfig(), workers=2, progress=False)  # 869 pairs: a slower build
    build_records(data, None, RecordsConfig(), progress=False)
    before = tree_digest(data / "tfrecords")
    cmd = [sys.executable, "-m", "tnbc_pipeline", "-q", "records", "--dataset", str(data), "--shard-mb", "0.2", "--force"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _staged_shards(data) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the records build finished before it could be killed"
    assert tree_digest(data / "tfrecords") == before  # the previous shards and index, untouched
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    build_records(data, tmp_path / "clean", RecordsConfig(shard_mb=0.2), progress=False)
    rerun, clean = tree_digest(data / "tfrecords"), tree_digest(tmp_path / "clean")
    shards = {k: v for k, v in rerun.items() if k.endswith(".tfrecord")}
    assert shards == {k: v for k, v in clean.items() if k.endswith(".tfrecord")} and len(shards) > 2
    assert not verify_records(data / "tfrecords", data, progress=False)


def test_a_shard_from_another_dataset_version_is_reported(dataset: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(dataset, tmp_path / "TNBC"))
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["config"]["seed"] = 99  # the dataset changed after the shards were built
    (data / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_records(data / "tfrecords", data, progress=False)
    assert len(problems) == 1 and "built from another version" in problems[0]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_hostile_pngs_are_refused_before_decoding() -> None:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 10 gigapixels declared
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")
    with pytest.raises(TnbcError, match="declares 100000x100000 pixels"):
        png_header(bomb, "bomb.png")
    ok, deep = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint16))
    with pytest.raises(TnbcError, match="16-bit PNG not supported"):
        decode_image(deep.tobytes(), "deep.png")
    ok, grey = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    with pytest.raises(TnbcError, match="expected an RGB or RGBA image"):
        decode_image(grey.tobytes(), "grey.png")


def test_palette_pngs_are_read_as_rgb(tmp_path: Path) -> None:
    from PIL import Image

    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(tmp_path / "p.png")
    image = decode_image((tmp_path / "p.png").read_bytes(), "p.png")
    assert image.shape == (2, 2, 3) and tuple(image[0, 0]) == (255, 0, 0) and tuple(image[0, 1]) == (0, 0, 255)


_VALID_PNG = cv2.imencode(".png", np.where(np.eye(3, 5, dtype=bool), 255, 0).astype(np.uint8))[1].tobytes()


@example(data=_VALID_PNG[8:], flip=None)
@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.just(_VALID_PNG[8:])),
       st.one_of(st.none(), st.tuples(st.integers(0, len(_VALID_PNG) - 9), st.integers(0, 255))))
def test_png_decoders_fail_only_with_the_project_error(data: bytes, flip) -> None:
    """Any bytes after the signature (or a valid PNG with one byte changed) decode to a well-formed array
    whose size is the header's, or fail with the project's error -- nothing else."""
    if flip is not None and flip[0] < len(data):
        data = data[: flip[0]] + bytes([flip[1]]) + data[flip[0] + 1 :]
    png = b"\x89PNG\r\n\x1a\n" + data
    for decode, channels in ((decode_image, (3,)), (decode_mask, ())):
        try:
            arr = decode(png, "fuzz.png")
        except TnbcError:
            continue
        width, height = struct.unpack(">II", png[16:24])
        assert arr.dtype == np.uint8 and arr.shape == (height, width, *channels)
        if decode is decode_mask:
            assert set(np.unique(arr)) <= {0, 255}
    if png == _VALID_PNG:  # the unchanged file decodes as its mask
        assert np.array_equal(decode_mask(png, "ok.png") > 0, np.eye(3, 5, dtype=bool))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=400))
def test_the_record_parser_reports_any_shard_bytes_as_a_problem(dataset: Path, tmp_path_factory, data: bytes) -> None:
    """Arbitrary bytes behind a matching index entry: verify names the shard, never crashes."""
    import hashlib

    folder = tmp_path_factory.mktemp("fuzzrec")
    (folder / "train-00000-of-00001.tfrecord").write_bytes(data)
    entry = {"file": "train-00000-of-00001.tfrecord", "split": "train", "records": 1, "bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "index.json").write_text(json.dumps({"shards": [entry], "compression": "none"}))
    problems = verify_records(folder, progress=False)
    assert len(problems) == 1 and problems[0].startswith(str(folder / entry["file"]))


def test_hostile_archives_are_refused(release_root: Path, tmp_path: Path) -> None:
    import zipfile

    from tests.conftest import make_zip
    from tnbc_pipeline.data.raw import Release

    good = make_zip(release_root, tmp_path / "good.zip", junk=False)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # the central directory is gone
    with pytest.raises(TnbcError, match="cut.zip: not a zip archive"):
        Release(cut)
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Slide_01/01_1.png", b"\0" * (65 * 1024 * 1024))  # ~65 KB on disk, 65 MB inflated
    with pytest.raises(TnbcError, match="declares 68157440 bytes"):
        Release(tmp_path / "bomb.zip")
    with pytest.warns(UserWarning), zipfile.ZipFile(tmp_path / "dupe.zip", "w") as zf:
        zf.writestr("Slide_01/01_1.png", b"a")
        zf.writestr("Slide_01/01_1.png", b"b")
    with pytest.raises(TnbcError, match="duplicate member"):
        Release(tmp_path / "dupe.zip")


def test_symlinks_in_the_dataset_are_not_followed_when_it_is_rebuilt(dataset: Path, release_root: Path,
                                                                    tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    out = Path(shutil.copytree(dataset, tmp_path / "TNBC", symlinks=True))
    (out / "train" / "images" / "link").symlink_to(outside, target_is_directory=True)
    (out / "shortcut").symlink_to(outside, target_is_directory=True)
    build_dataset(release_root, out, DatasetConfig(seed=4, augment=SMALL.augment), workers=1, progress=False)
    assert (outside / "keep.txt").read_text() == "mine"  # the old train/ went, its link's target did not
    assert (out / "shortcut").is_symlink()  # another tool's entry carried over as it was


def test_the_output_may_not_be_or_contain_the_release(release_root: Path) -> None:
    for out in (release_root, release_root / "Slide_01", release_root.parent):
        with pytest.raises(TnbcError, match="overlaps the raw release"):
            build_dataset(release_root, out, SMALL, workers=1, progress=False)
