"""Helpers shared by the benchmarks: a default dataset + records, measurements in child processes
(so each peak RSS is its own), and records folders that list the train shards several times."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB: VmHWM of its own memory (Linux), which an
    exec starts afresh -- ru_maxrss keeps the peak of the parent it was forked from, so a child of a
    large parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(script: str, *args: str) -> dict:
    """Run `script --child ARGS...` and return the JSON dict it prints last."""
    out = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"benchmark child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare(raw: Path | None, tmp: Path) -> tuple[Path, Path]:
    """The default dataset and its records under `tmp` (from `raw`, or a synthetic 512 px release)."""
    from tnbc_pipeline.config import DatasetConfig, RecordsConfig
    from tnbc_pipeline.data.dataset import build_dataset
    from tnbc_pipeline.data.records import build_records
    from tnbc_pipeline.data.synth import write_release

    raw = raw or write_release(tmp / "raw", seed=0, size=512)
    dataset = tmp / "TNBC"
    build_dataset(raw, dataset, DatasetConfig(), progress=False)
    build_records(dataset, None, RecordsConfig(), progress=False)
    return raw, dataset


def replicate(records: Path, copies: int, dest: Path) -> Path:
    """A records folder listing every train shard `copies` times (hard links): copies x the data."""
    index = json.loads((records / "index.json").read_text())
    dest.mkdir(parents=True)
    shards = []
    for shard in index["shards"]:
        for c in range(copies if shard["split"] == "train" else 1):
            name = f"copy{c}-{shard['file']}"
            os.link(records / shard["file"], dest / name)
            shards.append({**shard, "file": name})
    (dest / "index.json").write_text(json.dumps({**index, "shards": shards}))
    return dest


def load_split_arrays(dataset: Path, split: str, copies: int = 1):
    """The old way: every file of a split cv2-read into one uint8 array (N, H, W, 3) + bool masks (N, H, W, 1)."""
    import cv2
    import numpy as np

    items = [it for it in json.loads((dataset / "manifest.json").read_text())["items"] if it["split"] == split]
    first = cv2.imread(str(dataset / items[0]["image"]))
    images = np.zeros((len(items) * copies, *first.shape), np.uint8)
    masks = np.zeros((len(items) * copies, *first.shape[:2], 1), bool)
    for c in range(copies):
        for i, it in enumerate(items):
            images[c * len(items) + i] = cv2.imread(str(dataset / it["image"]))[:, :, ::-1]
            masks[c * len(items) + i, ..., 0] = cv2.imread(str(dataset / it["mask"]), cv2.IMREAD_GRAYSCALE) > 127
    return images, masks


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments the benchmarks share: --raw (a release, else a synthetic one made in a temporary folder)
    and the hidden --child that `child` runs a measurement with."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, help="A TNBC release (default: a synthetic 512 px one, made here).")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    return parser
