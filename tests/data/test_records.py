"""TFRecord shards: schema round trip, shard sizing and naming, index, rebuild-on-change, verify."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tnbc_pipeline.cli import main
from tnbc_pipeline.config import AugmentConfig, DatasetConfig, RecordsConfig
from tnbc_pipeline.data.dataset import build_dataset
from tnbc_pipeline.data.records import build_records, plan_shards, read_index, verify_records
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.io import sha256_file

SMALL = DatasetConfig(augment=AugmentConfig(rotations=(90.0,), alpha=(110.0,), sigma=(8.0,), distort=(), shrink=()))
SHARD_MB = 0.25  # a few shards per split even on 96 px images


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, release_root: Path) -> Path:
    out = tmp_path_factory.mktemp("ds") / "TNBC"
    build_dataset(release_root, out, SMALL, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def records(dataset: Path) -> Path:
    build_records(dataset, None, RecordsConfig(shard_mb=SHARD_MB), progress=False)
    return dataset / "tfrecords"


def test_schema_round_trip_is_bit_exact(dataset: Path, records: Path) -> None:
    from tnbc_pipeline.data.schema import parse_example
    from tnbc_pipeline.tf_env import tf

    manifest = {Path(it["image"]).stem: it for it in json.loads((dataset / "manifest.json").read_text())["items"]}
    seen = 0
    for shard in read_index(records)["shards"]:
        for record in tf.data.TFRecordDataset(str(records / shard["file"])):
            ex = parse_example(record)
            it = manifest[ex["key"].numpy().decode()]
            image = cv2.imread(str(dataset / it["image"]))[:, :, ::-1]
            mask = cv2.imread(str(dataset / it["mask"]), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(ex["image"].numpy(), image)
            # 8-bit masks read back as uint16: 255 -> 65535 (decode_png scales), 0 stays 0
            assert mask.dtype == np.uint8 and np.array_equal(ex["mask"].numpy()[..., 0], mask.astype(np.uint16) * 257)
            assert ex["patient"].numpy().decode() == it["patient"] and ex["op"].numpy().decode() == it["op"]
            assert ex["source"].numpy().decode() == it["source"] and it["split"] == shard["split"]
            assert (int(ex["height"]), int(ex["width"])) == mask.shape
            seen += 1
    assert seen == len(manifest)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 1000), max_size=60), st.integers(1, 5000))
def test_plan_shards_cuts_contiguous_balanced_runs(sizes: list[int], target: int) -> None:
    runs = plan_shards(sizes, target)
    assert [i for r in runs for i in r] == list(range(len(sizes)))  # every item once, in order
    if sizes:
        expected = min(len(sizes), -(-sum(sizes) // target))
        assert len(runs) == expected and all(len(r) for r in runs)


def test_shard_names_sizes_and_index(dataset: Path, records: Path) -> None:
    index = read_index(records)
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert index["manifest_sha256"] == sha256_file(dataset / "manifest.json")
    by_split: dict[str, list[dict]] = {}
    for shard in index["shards"]:
        by_split.setdefault(shard["split"], []).append(shard)
        path = records / shard["file"]
        assert path.stat().st_size == shard["bytes"] and sha256_file(path) == shard["sha256"]
    for split, shards in by_split.items():
        n = len(shards)
        assert [s["file"] for s in shards] == [f"{split}-{i:05d}-of-{n:05d}.tfrecord" for i in range(n)]
        assert sum(s["records"] for s in shards) == sum(it["split"] == split for it in manifest["items"])
        png_bytes = sum((dataset / it[k]).stat().st_size for it in manifest["items"] if it["split"] == split
                        for k in ("image", "mask"))
        assert n == min(sum(s["records"] for s in shards), -(-png_bytes // int(SHARD_MB * 2**20)))
    assert len(by_split["train"]) > 1 and len(by_split["test"]) == 1  # small splits get one shard
    assert sorted(p.name for p in records.iterdir()) == sorted(["identity.json", "index.json"] + [s["file"] for s in index["shards"]])


def test_no_op_when_unchanged_and_rebuild_when_the_dataset_changes(dataset: Path, release_root: Path,
                                                                   tmp_path: Path) -> None:
    data = tmp_path / "TNBC"
    shutil.copytree(dataset, data, ignore=shutil.ignore_patterns("tfrecords"))
    first = build_records(data, None, RecordsConfig(shard_mb=SHARD_MB), progress=False)
    assert first.changed
    stamps = {p.name: p.stat().st_mtime_ns for p in (data / "tfrecords").iterdir()}
    again = build_records(data, None, RecordsConfig(shard_mb=SHARD_MB), progress=False)
    assert not again.changed and {p.name: p.stat().st_mtime_ns for p in (data / "tfrecords").iterdir()} == stamps
    # Regenerate the dataset with a new sigma: the index's manifest hash no longer matches -> rebuild.
    build_dataset(release_root, data, dataclasses.replace(SMALL, augment=dataclasses.replace(SMALL.augment, sigma=(12.0,))),
                  workers=1, progress=False)
    assert (data / "tfrecords" / "index.json").exists()  # the dataset rebuild carried the shards over
    rebuilt = build_records(data, None, RecordsConfig(shard_mb=SHARD_MB), progress=False)
    assert rebuilt.changed and read_index(data / "tfrecords")["manifest_sha256"] == sha256_file(data / "manifest.json")
    assert not verify_records(data / "tfrecords", data, progress=False)


def _damaged(records: Path, tmp_path: Path, how: str) -> tuple[Path, str]:
    copy = tmp_path / "tfrecords"
    shutil.copytree(records, copy)
    shard = read_index(copy)["shards"][1]["file"]
    data = bytearray((copy / shard).read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) - 500]
    (copy / shard).write_bytes(bytes(data))
    return copy, shard


@pytest.mark.parametrize("how, reason", [("flip", "sha256 differs"), ("truncate", "truncated")])
def test_verify_names_each_bad_shard(records: Path, tmp_path: Path, how: str, reason: str) -> None:
    copy, shard = _damaged(records, tmp_path, how)
    problems = verify_records(copy, progress=False)
    assert len(problems) == 1 and problems[0].startswith(str(copy / shard)) and reason in problems[0]
    result = CliRunner().invoke(main, ["-q", "records", "--out", str(copy), "--verify"])
    assert result.exit_code == 1 and f"BAD {copy / shard}" in result.output
    assert not verify_records(records, progress=False)


def test_verify_parses_records_behind_a_matching_hash(records: Path, tmp_path: Path) -> None:
    """A shard rewritten with its index entry updated to match still gets every record parsed."""
    copy, shard = _damaged(records, tmp_path, "flip")
    index = json.loads((copy / "index.json").read_text())
    entry = next(s for s in index["shards"] if s["file"] == shard)
    entry["sha256"] = sha256_file(copy / shard)
    (copy / "index.json").write_text(json.dumps(index))
    problems = verify_records(copy, progress=False)
    assert len(problems) == 1 and "unreadable record" in problems[0]


def test_a_dataset_without_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TnbcError, match="manifest.json: missing or malformed; run `tnbc dataset` first"):
        build_records(tmp_path, None, RecordsConfig(), progress=False)


def test_gzip_shards_round_trip(dataset: Path, tmp_path: Path) -> None:
    from tnbc_pipeline.data.pipeline import make_dataset

    build_records(dataset, tmp_path / "gz", RecordsConfig(compression="gzip"), progress=False)
    assert read_index(tmp_path / "gz")["compression"] == "gzip"
    assert not verify_records(tmp_path / "gz", dataset, progress=False)
    keys = [k for b in make_dataset(tmp_path / "gz", "test", training=False, batch_size=4) for k in b["key"].numpy()]
    assert len(keys) == sum(it["split"] == "test" for it in json.loads((dataset / "manifest.json").read_text())["items"])


def test_records_command_builds_then_reports_up_to_date(dataset: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(dataset, tmp_path / "TNBC", ignore=shutil.ignore_patterns("tfrecords")))
    args = ["-q", "records", "--dataset", str(data), "--shard-mb", "0.5"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "train" in first.output and (data / "tfrecords" / "index.json").exists()
    assert read_index(data / "tfrecords")["config"]["shard_mb"] == 0.5
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0 and "up to date" in second.output
    bad = CliRunner().invoke(main, ["records", "--dataset", str(data), "--compression", "zip"])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1  # refused before anything runs
    assert bad.output.startswith("Error: records: Invalid value for '--compression'")
