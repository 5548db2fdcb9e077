"""Shared fixtures (synthetic releases built by the package itself: tests never need the real data) and
helpers for command-line tests and models."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tnbc_pipeline.data.synth import write_release

SIZE = 96  # small images keep the suite fast; the layout and counts are the real ones


@pytest.fixture(scope="session", autouse=True)
def speed_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training-speed cache (model/speed.py) of this test session: never the user's."""
    folder = tmp_path_factory.mktemp("speed-cache")
    os.environ["TNBC_CACHE_DIR"] = str(folder)  # CLI subprocesses inherit it
    return folder


@pytest.fixture(scope="session")
def release_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine synthetic release: <tmp>/TNBC_NucleiSegmentation/{Slide_PP,GT_PP}/PP_K.png. Do not modify."""
    return write_release(tmp_path_factory.mktemp("release"), seed=0, size=SIZE)


@pytest.fixture
def release(release_root: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of the synthetic release folder."""
    return Path(shutil.copytree(release_root, tmp_path / "raw" / "TNBC_NucleiSegmentation"))


def make_zip(root: Path, dest: Path, junk: bool = True) -> Path:
    """Zip a release folder as the archive does (top folder TNBC_NucleiSegmentation/), with macOS junk."""
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(root.rglob("*")):
            rel = f"TNBC_NucleiSegmentation/{path.relative_to(root).as_posix()}"
            if path.is_file():
                zf.write(path, rel)
                if junk:
                    zf.writestr(f"__MACOSX/{os.path.dirname(rel)}/._{path.name}", b"\x00\x05\x16\x07junk")
        if junk:
            zf.writestr("TNBC_NucleiSegmentation/.DS_Store", b"junk")
    return dest


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 for every file under `folder` (hidden files included, except the dataset's
    `.stamps.json`: this machine's record of inodes and mtimes, not content)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".stamps.json"}


def one_error(result, *needles: str) -> str:
    """The single `Error:` line of a failed command (exit 1), containing every needle."""
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def within(seconds: int):
    """Fail instead of hanging (a FIFO read, say)."""
    def alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    (path / "config.json").write_text('{"mine": true}')
    return path


def learns_and_reloads(model, x: np.ndarray, path: Path):
    """Four training steps (BCE+Dice, Adam 1e-3) on the fixed batch `x` (B, S, S, 3), S >= 44, against a
    fixed square nucleus in every output channel lower the training-mode loss (BatchNorm's moving statistics
    barely move in 4 steps); save -> safe_mode load predicts the same. Returns the reloaded model."""
    import keras

    from tnbc_pipeline.model import losses

    y = np.zeros((*x.shape[:3], model.output_shape[-1]), np.float32)
    y[:, 16:40, 20:44] = 1.0
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses.bce_dice_loss)
    trace = [float(model.train_on_batch(x, y)) for _ in range(4)]
    assert trace[-1] < trace[0], trace
    model.save(path / "m.keras")
    again = keras.saving.load_model(path / "m.keras", safe_mode=True)
    assert np.allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    return again
