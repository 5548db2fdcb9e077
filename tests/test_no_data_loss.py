"""No user file is ever lost, and no input ends in a traceback: one test per class of failure (issue 12).
The guard over every command is tests/test_guard.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import make_zip, one_error, tree_digest, user_folder, within
from tnbc_pipeline.cli import main
from tnbc_pipeline.config import AugmentConfig, DatasetConfig, RecordsConfig
from tnbc_pipeline.data.dataset import build_dataset
from tnbc_pipeline.data.records import build_records
from tnbc_pipeline.data.synth import write_release
from tnbc_pipeline.errors import TnbcError

ROOT = Path(__file__).resolve().parents[1]
SMALL = DatasetConfig(augment=AugmentConfig(rotations=(90.0,), alpha=(), sigma=(), distort=(), shrink=()))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, release_root: Path) -> Path:
    out = tmp_path_factory.mktemp("noloss") / "TNBC"
    build_dataset(release_root, out, SMALL, workers=1, progress=False)
    build_records(out, None, RecordsConfig(), progress=False)
    return out


def invoke(*args: str):
    with within(120):
        return CliRunner().invoke(main, ["-q", *args])


# --- 1. A stage writes only into a new or empty folder, or one it made itself -------------------------

def test_no_stage_writes_into_a_folder_it_did_not_make(release_root: Path, dataset: Path, tmp_path: Path) -> None:
    mine = user_folder(tmp_path / "mine")
    before = tree_digest(mine)
    records = str(dataset / "tfrecords")
    cases = [
        ["dataset", "--raw", str(release_root), "--out", str(mine), "--workers", "1"],
        ["records", "--dataset", str(dataset), "--out", str(mine)],
        ["train", "--records", records, "--run-dir", str(mine), "--epochs", "1"],
        ["train", "--records", records, "--run-dir", str(mine), "--force"],
        ["eval", "--run-dir", str(tmp_path / "norun"), "--records", records, "--out", str(mine)],
        ["infer", "--run-dir", str(tmp_path / "norun"), "--images", str(dataset / "test" / "images"), "--out", str(mine)],
        ["cv", "--raw", str(release_root), "--out", str(mine)],
        ["study", "--raw", str(release_root), "--out", str(mine)],
    ]
    for args in cases:
        one_error(invoke(*args), str(mine), "not empty and holds files tnbc did not write")
    assert tree_digest(mine) == before
    # another stage's folder is not this stage's either
    one_error(invoke("records", "--dataset", str(dataset), "--out", str(dataset)), "made by `tnbc dataset`")
    # synth over an existing release (not one synth made) is refused; over its own it is allowed
    real = tmp_path / "real"
    (real / "TNBC_NucleiSegmentation" / "Slide_01").mkdir(parents=True)
    (real / "TNBC_NucleiSegmentation" / "Slide_01" / "01_1.png").write_bytes(b"a real image")
    one_error(invoke("synth", "--out", str(real), "--size", "32"), "TNBC_NucleiSegmentation: not empty")
    assert (real / "TNBC_NucleiSegmentation" / "Slide_01" / "01_1.png").read_bytes() == b"a real image"
    assert invoke("synth", "--out", str(tmp_path / "s"), "--size", "32").exit_code == 0
    assert invoke("synth", "--out", str(tmp_path / "s"), "--size", "32", "--seed", "1").exit_code == 0


def test_a_users_folder_is_refused_before_the_training_speed_is_measured(dataset: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`precision = "auto"` times the model for about a minute on a CPU with bfloat16; a refusal must not wait."""
    from tnbc_pipeline.config import TrainConfig
    from tnbc_pipeline.model import speed
    from tnbc_pipeline.model.train import train

    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(speed, "gpu_policy", lambda: None)
    monkeypatch.setenv("TNBC_CACHE_DIR", str(tmp_path / "cache"))  # nothing measured yet
    timed: list[TrainConfig] = []
    monkeypatch.setattr(speed, "images_per_s", lambda cfg: timed.append(cfg) or {"float32": 1.0, "mixed_bfloat16": 2.0})
    long = TrainConfig(epochs=20, steps_per_epoch=40, batch_size=8)  # measured for, were the folder a run's
    assert speed.measured(long)
    mine = user_folder(tmp_path / "mine")
    before = tree_digest(mine)
    with pytest.raises(TnbcError, match="not empty and holds files tnbc did not write"):
        train(dataset / "tfrecords", mine, long, progress=False)
    assert timed == [] and tree_digest(mine) == before


def test_dot_dotdot_and_symlinks_are_refused(release_root: Path, tmp_path: Path, monkeypatch) -> None:
    work = user_folder(tmp_path / "work")
    monkeypatch.chdir(work)
    for out in (".", ".."):
        one_error(invoke("dataset", "--raw", str(release_root), "--out", out, "--workers", "1"), "not empty")
    (tmp_path / "link").symlink_to(work, target_is_directory=True)
    one_error(invoke("dataset", "--raw", str(release_root), "--out", str(tmp_path / "link"), "--workers", "1"),
              "is a symbolic link")
    assert sorted(p.name for p in work.iterdir()) == ["config.json", "notes.txt"]


def test_an_interrupted_swap_never_strands_kept_files(tmp_path: Path, monkeypatch) -> None:
    """A kill after the renames but before the kept entries are carried across: the old folder (holding
    them) is left, and the next run carries them over -- they were never inside a folder to be deleted."""
    from tnbc_pipeline import io

    target, new = tmp_path / "out", tmp_path / ".out.partial"
    (target / "tfrecords").mkdir(parents=True)
    (target / "tfrecords" / "shard").write_text("kept")
    (target / "manifest.json").write_text("old")
    new.mkdir()
    (new / "manifest.json").write_text("new")
    keep = lambda name: name != "manifest.json"  # noqa: E731
    monkeypatch.setattr(io, "_carry_and_remove", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        io.replace_dir(target, new, keep)
    assert (tmp_path / ".out.old" / "tfrecords" / "shard").read_text() == "kept"  # not in the staging folder
    monkeypatch.undo()
    io.recover_dir(target, keep)
    assert (target / "tfrecords" / "shard").read_text() == "kept" and (target / "manifest.json").read_text() == "new"
    assert not (tmp_path / ".out.old").exists()


# --- 2. Two inputs never become one --------------------------------------------------------------------

def test_two_files_of_one_key_or_one_output_name_are_refused(release: Path, tmp_path: Path, dataset: Path) -> None:
    import shutil

    shutil.copy(release / "Slide_01" / "01_1.png", release / "Slide_01" / "01_01.png")
    shutil.copy(release / "GT_01" / "01_1.png", release / "GT_01" / "01_01.png")
    line = one_error(invoke("dataset", "--raw", str(release), "--out", str(tmp_path / "o"), "--workers", "1"),
                     "names the same image 01_1 as")
    assert "01_01.png" in line and "01_1.png" in line
    images = tmp_path / "images"
    images.mkdir()
    image = cv2.imread(str(dataset / "test" / "images" / sorted(os.listdir(dataset / "test" / "images"))[0]))
    cv2.imwrite(str(images / "s.png"), image)
    cv2.imwrite(str(images / "s.jpg"), image)
    from tnbc_pipeline.inference.infer import image_files

    with pytest.raises(TnbcError, match=r"s\.png: would write the same outputs as s\.jpg"):
        image_files(images)


# --- 3. What the tool wrote is checked when read back --------------------------------------------------

def test_a_hand_edited_manifest_never_moves_test_images_into_training(dataset: Path, tmp_path: Path) -> None:
    import shutil

    data = Path(shutil.copytree(dataset, tmp_path / "TNBC", ignore=shutil.ignore_patterns("tfrecords")))
    manifest = json.loads((data / "manifest.json").read_text())
    item = next(it for it in manifest["items"] if it["split"] == "test")
    for kind in ("image", "mask"):  # move the files and the entry consistently: only the split is wrong
        moved = item[kind].replace("test/", "train/", 1)
        os.replace(data / item[kind], data / moved)
        item[kind] = moved
    item["split"] = "train"
    (data / "manifest.json").write_text(json.dumps(manifest))
    one_error(invoke("records", "--dataset", str(data)), "missing or malformed; run `tnbc dataset` first")
    assert not (data / "tfrecords").exists()
    del manifest["items"][0]["image_sha256"]  # a missing field: the same one line, never a KeyError
    (data / "manifest.json").write_text(json.dumps(manifest))
    one_error(invoke("records", "--dataset", str(data)), "missing or malformed")


def test_an_index_pointing_outside_its_folder_is_refused(dataset: Path, tmp_path: Path) -> None:
    import shutil

    records = Path(shutil.copytree(dataset / "tfrecords", tmp_path / "tfrecords"))
    index = json.loads((records / "index.json").read_text())
    for bad in ({"file": "../../secret.tfrecord"}, {"records": "7"}, {"sha256": None}):
        broken = {**index, "shards": [{**index["shards"][0], **bad}, *index["shards"][1:]]}
        (records / "index.json").write_text(json.dumps(broken))
        one_error(invoke("records", "--dataset", str(dataset), "--out", str(records), "--verify"),
                  "malformed records index")


def test_malformed_run_files_are_one_line(dataset: Path, tmp_path: Path) -> None:
    from tnbc_pipeline.config import ModelConfig, TrainConfig
    from tnbc_pipeline.model.train import train

    run = tmp_path / "run"
    cfg = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, patch=32, val_batch_size=4, epoch_infer=0,
                      model=ModelConfig(levels=2, base_filters=2))
    train(dataset / "tfrecords", run, cfg, progress=False)
    config = (run / "config.json").read_text()
    for i, (text, needle) in enumerate((("{not json", "cannot read JSON"),
                                        ('{"config": {"patch": "big"}}', "patch: expected int"))):
        (run / "config.json").write_text(text)
        command = ["infer", "--run-dir", str(run), "--images", str(dataset / "test" / "images"), "--out",
                   str(tmp_path / f"o{i}")]
        one_error(invoke(*command), str(run / "config.json"), needle)
    (run / "config.json").write_text(config)
    (run / "done.json").write_text('{"epochs_run": 1}')
    with pytest.raises(TnbcError, match="done.json: malformed run record"):
        train(dataset / "tfrecords", run, cfg, progress=False)


# --- 4. Numbers that pass a range check but are not numbers --------------------------------------------

def test_numbers_are_finite_and_flags_are_checked_together(release_root: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "o")
    base = ["dataset", "--raw", str(release_root), "--out", out, "--workers", "1"]
    for extra, needle in ((["--alpha", "nan", "--sigma", "8"], "augment.alpha[0]: must be a finite number"),
                          (["--alpha", "100", "--sigma", "inf"], "augment.sigma[0]: must be a finite number"),
                          (["--seed", "-1"], "seed must be in [0, 2**32)"),
                          (["--split-seed", str(2**70)], "seed must be in [0, 2**32)"),
                          (["--fold", "1"], "split.fold = 1 needs split.folds (--folds)"), (["--fold", "0"], "--fold 0 needs --folds")):
        with within(30):
            one_error(invoke(*base, *extra), needle)
    one_error(invoke("study", "--raw", str(release_root), "--out", out, "--elastic", "nan:8"), "finite number")
    one_error(invoke("synth", "--out", out, "--seed", "-1"), "synth: Invalid value for '--seed'")
    assert not Path(out).exists()


# --- 5. Inputs the readers never expected ---------------------------------------------------------------

def test_fifos_and_odd_files_are_one_line_errors(release: Path, tmp_path: Path, dataset: Path) -> None:
    os.remove(release / "Slide_02" / "02_1.png")
    os.mkfifo(release / "Slide_02" / "02_1.png")
    one_error(invoke("dataset", "--raw", str(release), "--out", str(tmp_path / "o"), "--workers", "1"),
              "02_1.png: not a regular file")
    os.mkfifo(tmp_path / "fifo.toml")
    one_error(invoke("dataset", "--raw", str(release), "--config", str(tmp_path / "fifo.toml")), "not a regular file")
    (tmp_path / "latin1.toml").write_bytes(b"seed = 1 # caf\xe9\n")
    one_error(invoke("dataset", "--raw", str(release), "--config", str(tmp_path / "latin1.toml")), "not UTF-8 text")
    from tnbc_pipeline.inference.infer import read_image

    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(TnbcError, match="empty file"):
        read_image(tmp_path / "empty.jpg")
    os.mkfifo(tmp_path / "pipe.png")
    with within(10), pytest.raises(TnbcError, match="not a regular file"):
        read_image(tmp_path / "pipe.png")


def _patch_zip(path: Path, flag: int = 0, method: int | None = None) -> None:
    """Set general-purpose flag bits / the compression method of every member, in both headers."""
    data = bytearray(path.read_bytes())
    for sig, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = 0
        while (at := data.find(sig, start)) >= 0:
            bits = struct.unpack_from("<H", data, at + flag_at)[0] | flag
            struct.pack_into("<H", data, at + flag_at, bits)
            if method is not None:
                struct.pack_into("<H", data, at + method_at, method)
            start = at + 4
    path.write_bytes(bytes(data))


def test_encrypted_and_deflate64_members_are_one_line(release_root: Path, tmp_path: Path) -> None:
    for name, kw, needle in (("enc.zip", {"flag": 1}, "encrypted"), ("d64.zip", {"method": 9}, "deflate64")):
        archive = make_zip(release_root, tmp_path / name, junk=False)
        _patch_zip(archive, **kw)
        line = one_error(invoke("dataset", "--raw", str(archive), "--out", str(tmp_path / name[:3]), "--workers", "1"),
                         "cannot read")
        assert needle in line.lower()


def test_full_disk_during_records_is_one_line(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    import shutil

    from tnbc_pipeline.tf_env import tf

    data = Path(shutil.copytree(dataset, tmp_path / "TNBC", ignore=shutil.ignore_patterns("tfrecords")))

    class Full:
        def __init__(self, *a, **k) -> None:
            pass

        def __enter__(self):
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

        def __exit__(self, *a) -> None:
            pass

    monkeypatch.setattr(tf.io, "TFRecordWriter", Full)
    one_error(invoke("records", "--dataset", str(data)), "cannot write (No space left on device)")
    assert not (data / "tfrecords").exists()


def test_a_malformed_tf_config_is_one_line() -> None:
    from tnbc_pipeline.model.distribute import check_tf_config

    good = '{"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 1}}'
    assert check_tf_config(good)["task"]["index"] == 1
    for text, needle in ((None, "needs the TF_CONFIG"), ("{oops", "not JSON"), ("[]", "'cluster' must map"),
                         ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "'task' must"),
                         ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}', "'cluster'")):
        with pytest.raises(TnbcError, match=needle):
            check_tf_config(text)


def test_images_far_smaller_than_the_patch_train(release_root: Path, tmp_path: Path) -> None:
    from tnbc_pipeline.data.pipeline import make_dataset

    tiny = write_release(tmp_path / "tiny", size=32)  # 32-px images, 128-px training patches
    build_dataset(tiny, tmp_path / "TNBC", SMALL, workers=1, progress=False)
    build_records(tmp_path / "TNBC", None, RecordsConfig(), progress=False)
    x, y = next(iter(make_dataset(tmp_path / "TNBC" / "tfrecords", "train", training=True, batch_size=2, patch=128)))
    assert x.shape == (2, 128, 128, 3) and y.shape == (2, 128, 128, 1)
    assert set(np.unique(y.numpy())) <= {0.0, 1.0}  # the mask mirrored with the image, still binary


# --- 6. One error line is one line --------------------------------------------------------------------

def test_error_lines_are_short(tmp_path: Path) -> None:
    line = one_error(invoke("dataset", "--raw", str(tmp_path / ("x" * 100_000))), "File name too long")
    assert len(line) < 500
    line = one_error(invoke("eval", "--run-dir", str(tmp_path), "--split", "y" * 50_000), "Invalid value for '--split'")
    assert len(line) < 500


# --- 7. Workers die with the command that started them -------------------------------------------------

def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        children = [p for p, parent in parents.items() if parent == current]
        found += children
        todo += children
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killing_the_command_ends_its_workers(tmp_path: Path) -> None:
    raw = write_release(tmp_path / "raw", size=384)
    cmd = [sys.executable, "-m", "tnbc_pipeline", "-q", "dataset", "--raw", str(raw), "--out", str(tmp_path / "o"),
           "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while len(workers) < 3 and proc.poll() is None and time.monotonic() < deadline:  # forkserver + 2 workers
        workers = _descendants(proc.pid)
        time.sleep(0.05)
    assert len(workers) >= 3 and proc.poll() is None, "the build ended before its workers could be seen"
    time.sleep(0.5)
    workers = _descendants(proc.pid)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [p for p in workers if _running(p)]
    for pid in survivors:  # never leave them spinning, even when the test fails
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not survivors
