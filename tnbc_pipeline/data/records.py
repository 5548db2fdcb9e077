"""The records stage: the dataset's PNG pairs -> TFRecord shards per split + `index.json`; and verify.

Shards are `{split}-{i:05d}-of-{n:05d}.tfrecord`, cut to about `shard_mb` each (contiguous runs of a
fixed, seeded shuffle of the split's items). The index lists per shard its split, record count, bytes
and sha256, plus the sha256 of the dataset manifest it was built from: when the dataset changes the
next run rebuilds, otherwise it does nothing. The whole folder is built beside the output and swapped
in, so a killed run leaves the previous shards intact.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tnbc_pipeline import __version__
from tnbc_pipeline.config import SPLITS, RecordsConfig, to_dict
from tnbc_pipeline.data.manifest import Item, read_manifest
from tnbc_pipeline import identity
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.io import (folder_lock, png_header, read_json, read_regular, recover_dir, replace_dir, sha256_bytes, sha256_file,
                              staging_dir, write_json)

log = logging.getLogger(__name__)

INDEX = "index.json"
MiB = 1024 * 1024


@dataclass
class RecordsSummary:
    out: Path
    rows: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> records, shards, bytes
    changed: bool = True


def plan_shards(sizes: list[int], target_bytes: float) -> list[range]:
    """Cut items (in order) into ceil(total / target) contiguous runs of about equal bytes."""
    if not sizes:
        return []
    n = len(sizes)
    count = min(n, max(1, math.ceil(sum(sizes) / target_bytes)))
    cum = np.cumsum(sizes)
    bounds = [0]
    for k in range(1, count):
        cut = int(np.searchsorted(cum, cum[-1] * k / count, side="left")) + 1
        bounds.append(min(max(cut, bounds[-1] + 1), n - (count - k)))  # every run keeps >= 1 item
    bounds.append(n)
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


_SHARD_FILE = re.compile(r"^(train|valid|test)-[0-9]{5}-of-[0-9]{5}\.tfrecord$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _shard_ok(shard: Any) -> bool:
    """An index entry naming a shard file inside the records folder, of its own split, with sane numbers."""
    return (isinstance(shard, dict) and isinstance(shard.get("file"), str) and bool(_SHARD_FILE.match(shard["file"]))
            and shard.get("split") == shard["file"].split("-")[0]
            and all(type(shard.get(k)) is int and shard[k] >= 0 for k in ("records", "bytes"))
            and isinstance(shard.get("sha256"), str) and bool(_HEX64.match(shard["sha256"])))


def read_index(folder: Path) -> dict[str, Any]:
    """index.json, checked: every shard entry names a file of this folder (never a path outside it)."""
    path = folder / INDEX
    if not path.exists():
        raise TnbcError(f"{path}: no records index; run `tnbc records` first")
    index = read_json(path)
    if not (isinstance(index, dict) and isinstance(index.get("shards"), list) and all(map(_shard_ok, index["shards"]))
            and index.get("compression", "none") in ("none", "gzip")):
        raise TnbcError(f"{path}: malformed records index; rerun `tnbc records --force`")
    return index


def _foreign(name: str) -> bool:
    """Entries of a records folder the records stage does not write."""
    return name not in (INDEX, identity.FILE) and not name.endswith(".tfrecord")


SCHEMA_VERSION = 1  # of the TFRecord features (schema.py) and index.json


def records_identity(manifest_sha: str, cfg: RecordsConfig) -> identity.Identity:
    """The records folder's identity: its settings and the sha256 of the manifest it packs."""
    return identity.Identity("records", {"config": to_dict(cfg), "schema_version": SCHEMA_VERSION},
                             {"manifest": manifest_sha})


def index_sha256(folder: Path) -> str:
    """sha256 of a records folder's index.json: the identity downstream stages (train, eval) record."""
    read_index(folder)
    return sha256_file(Path(folder) / INDEX)


def _up_to_date(out: Path, wanted: identity.Identity) -> bool:
    try:
        index = read_index(out)
    except TnbcError:
        return False
    old = identity.read(out)
    if old is None or old.digest != wanted.digest:
        if out.exists():
            log.info("%s", identity.describe(out, identity.differences(old, wanted)) + "; rebuilding")
        return False
    return all((out / s["file"]).is_file() and (out / s["file"]).stat().st_size == s["bytes"] for s in index["shards"])


def _write_shard(path: Path, items: list[Item], dataset: Path, cfg: RecordsConfig, bar: tqdm) -> dict:
    """Write one shard (hidden temporary name, then rename); return its index entry."""
    from tnbc_pipeline.tf_env import tf

    tmp = path.with_name(f".{path.name}.tmp")
    options = tf.io.TFRecordOptions(compression_type="GZIP" if cfg.compression == "gzip" else "")
    try:
        _write_items(tf.io.TFRecordWriter(str(tmp), options), items, dataset, bar)
    except tf.errors.OpError as exc:  # TensorFlow's own I/O errors (disk full, ...) are not OSErrors
        tmp.unlink(missing_ok=True)
        raise TnbcError(f"{tmp}: cannot write ({exc.message.splitlines()[0][:200]})") from None
    tmp.rename(path)
    return {"file": path.name, "split": items[0].split, "records": len(items), "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def _write_items(writer: Any, items: list[Item], dataset: Path, bar: tqdm) -> None:
    from tnbc_pipeline.data.schema import encode_example

    with writer:
        for it in items:
            data = {}
            for kind, rel, digest in (("image", it.image, it.image_sha256), ("mask", it.mask, it.mask_sha256)):
                data[kind] = read_regular(dataset / rel)
                if sha256_bytes(data[kind]) != digest:
                    raise TnbcError(f"{dataset / rel}: differs from the dataset manifest; rerun `tnbc dataset`")
            width, height, _, _ = png_header(data["image"], str(dataset / it.image))
            writer.write(encode_example(data["image"], data["mask"], height, width, it.name, it.patient, it.source,
                                        it.op))
            bar.update(1)


def build_records(dataset: Path, out: Path | None, cfg: RecordsConfig, force: bool = False,
                  progress: bool = True) -> RecordsSummary:
    """Pack `dataset` (a `tnbc dataset` output) into shards under `out` (default dataset/tfrecords)."""
    dataset = Path(dataset)
    out = Path(out) if out else dataset / "tfrecords"
    read = read_manifest(dataset)
    if read is None:
        raise TnbcError(f"{dataset / 'manifest.json'}: missing or malformed; run `tnbc dataset` first")
    manifest_sha = sha256_file(dataset / "manifest.json")
    identity.claim(out, "records")  # a refusal writes nothing, not even the lock
    with folder_lock(out):
        recover_dir(out, keep=_foreign)
        identity.claim(out, "records")
        summary = RecordsSummary(out=out)
        wanted = records_identity(manifest_sha, cfg)
        if not force and _up_to_date(out, wanted):
            summary.changed = False
            summary.rows = _rows(read_index(out))
            return summary
        staging = staging_dir(out)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        head, items = read
        shards = []
        with tqdm(total=len(items), unit="pair", desc="records", disable=not progress) as bar:
            for split in SPLITS:
                split_items = [it for it in items if it.split == split]
                order = np.random.default_rng(cfg.seed).permutation(len(split_items))
                split_items = [split_items[i] for i in order]
                sizes = [(dataset / it.image).stat().st_size + (dataset / it.mask).stat().st_size
                         for it in split_items]
                runs = plan_shards(sizes, cfg.shard_mb * MiB)
                for i, run in enumerate(runs):
                    path = staging / shard_name(split, i, len(runs))
                    shards.append(_write_shard(path, [split_items[j] for j in run], dataset, cfg, bar))
        index = {"schema_version": SCHEMA_VERSION, "tool_version": __version__, "manifest_sha256": manifest_sha,
                 "dataset_config_hash": head.get("config_hash"), "config": to_dict(cfg),
                 "compression": cfg.compression, "shards": shards}
        write_json(staging / INDEX, index)
        identity.write(staging, wanted)
        replace_dir(out, staging, keep=_foreign)
        summary.rows = _rows(index)
        return summary


def _rows(index: dict[str, Any]) -> dict[str, dict[str, int]]:
    rows = {s: {"records": 0, "shards": 0, "bytes": 0} for s in SPLITS}
    for shard in index["shards"]:
        row = rows[shard["split"]]
        row["records"] += shard["records"]
        row["shards"] += 1
        row["bytes"] += shard["bytes"]
    return rows


def shard_problem(folder: Path, shard: dict[str, Any], deep: bool = False, compression: str = "none") -> str | None:
    """Why a shard listed in the index is unusable (None if it is fine). `deep` also parses every record
    (of the index's `compression`)."""
    path = folder / shard["file"]
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != shard["bytes"]:
        return f"{size} bytes, index says {shard['bytes']} (truncated or replaced)"
    if sha256_file(path) != shard["sha256"]:
        return "sha256 differs from the index (corrupted)"
    if deep:
        from tnbc_pipeline.data.schema import parse_example
        from tnbc_pipeline.tf_env import tf

        count = 0
        try:
            for record in tf.data.TFRecordDataset(str(path), compression_type="GZIP" if compression == "gzip" else ""):
                parse_example(record)
                count += 1
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
            return f"unreadable record {count}: {exc.message.splitlines()[0]}"
        if count != shard["records"]:
            return f"{count} records, index says {shard['records']}"
    return None


def verify_records(folder: Path, dataset: Path | None = None, progress: bool = True) -> list[str]:
    """Re-hash every shard and parse every record; return one 'shard: problem' line per bad shard."""
    index = read_index(folder)
    problems = []
    if dataset is not None and (dataset / "manifest.json").exists():
        if sha256_file(dataset / "manifest.json") != index.get("manifest_sha256"):
            problems.append(f"{folder / INDEX}: built from another version of {dataset}; rerun `tnbc records`")
    for shard in tqdm(index["shards"], unit="shard", desc="verify", disable=not progress):
        problem = shard_problem(folder, shard, deep=True, compression=index.get("compression", "none"))
        if problem:
            problems.append(f"{folder / shard['file']}: {problem}")
    return problems
