"""The dataset stage's on-disk contract: the typed manifest `Item`, `manifest.json` and the build journal.

Items are built and parsed here only (`Item.create`, `Item.from_json`), and so are their names: item
`KEY__SUFFIX` is the variant SUFFIX of release image KEY, stored as `SPLIT/images/KEY__SUFFIX.png` and
`SPLIT/masks/KEY__SUFFIX.png`. Everything read back is checked for shape before use, so a damaged or
hostile manifest can never make a stage read or link a path outside the dataset folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.io import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")
SEP = "__"  # between the release key and the variant suffix in an item's name
# A release key: TNBC's 'PP_K', or an own-data name made safe by layouts.safe_name (no '__', the separator).
_KEY = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.\-]|_(?!_))*(?<![_.])$")
_SUFFIX = re.compile(r"^[A-Za-z0-9_.\-]+$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
STAMPS = ".stamps.json"  # local cache beside the manifest: each file's size, mtime, inode and sha256 when written
RACY_NS = 100_000_000  # file clocks tick coarsely: a file stamped this close after its mtime is re-hashed


def item_name(key: str, suffix: str) -> str:
    """The name (file stem) of variant `suffix` of release image `key`."""
    return f"{key}{SEP}{suffix}"


def parse_name(name: str) -> tuple[str, str]:
    """`item_name`'s inverse: 'KEY__SUFFIX' -> (KEY, SUFFIX); a TnbcError for any other name."""
    key, sep, suffix = name.partition(SEP)
    if not (sep and _KEY.match(key) and ".." not in key and _SUFFIX.match(suffix) and ".." not in suffix):
        raise TnbcError(f"{name!r}: not a dataset item name (KEY__SUFFIX)")
    return key, suffix


def item_path(split: str, kind: str, key: str, suffix: str) -> str:
    """'SPLIT/images/KEY__SUFFIX.png' (kind 'image') or 'SPLIT/masks/KEY__SUFFIX.png' (kind 'mask')."""
    return f"{split}/{kind}s/{item_name(key, suffix)}.png"


@dataclass(frozen=True)
class Item:
    """One image/mask pair of the dataset, as manifest.json lists it."""

    split: str  # train | valid | test
    patient: str  # the patient 'PP' (the unit of the split; own data: its group)
    source: str  # the release image 'PP_K' it was made from (own data: its safe file stem)
    op: str  # the augmentation op ('original', 'flip_h', 'elastic', ...)
    params: dict[str, Any]  # the op's parameters
    image: str  # 'SPLIT/images/NAME.png', relative to the dataset folder
    mask: str  # 'SPLIT/masks/NAME.png'
    image_sha256: str  # of the PNG bytes on disk
    mask_sha256: str
    stats: dict[str, float] = field(default_factory=dict)  # what the op measured (displacement, ...)
    recipe: str = ""  # hash of everything that determines the bytes (dataset.py)

    @property
    def name(self) -> str:
        return Path(self.image).stem

    @classmethod
    def create(cls, split: str, patient: str, source: str, op: str, suffix: str, params: dict[str, Any],
               image_sha256: str, mask_sha256: str, stats: dict[str, float]) -> Item:
        return cls(split, patient, source, op, dict(params), item_path(split, "image", source, suffix),
                   item_path(split, "mask", source, suffix), image_sha256, mask_sha256, dict(stats))

    def with_recipe(self, recipe: str) -> Item:
        return replace(self, recipe=recipe)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str) -> Item:
        """Parse and check one manifest item: its paths are the ones its split and name give (never
        outside the dataset), its source is the name's key and of its patient, its hashes sha256 digests."""
        def bad(why: str) -> TnbcError:
            return TnbcError(f"{where}: malformed manifest item ({why})")

        if not isinstance(data, dict):
            raise bad("not an object")
        texts = ("split", "patient", "source", "op", "image", "mask", "image_sha256", "mask_sha256")
        if not all(isinstance(data.get(k), str) for k in texts):
            raise bad(f"needs the text fields {', '.join(texts)}")
        if not isinstance(data.get("params", {}), dict) or not isinstance(data.get("stats", {}), dict):
            raise bad("params and stats must be objects")
        if data["split"] not in SPLIT_NAMES:
            raise bad(f"unknown split {data['split'][:20]!r}")
        try:
            key, suffix = parse_name(Path(data["image"]).stem)
        except TnbcError:
            raise bad(f"image path {data['image'][:200]!r}") from None
        if data["image"] != item_path(data["split"], "image", key, suffix) or data["mask"] != item_path(
                data["split"], "mask", key, suffix):
            raise bad("paths do not follow SPLIT/{images,masks}/KEY__SUFFIX.png")
        if key != data["source"] or not data["patient"]:
            raise bad("source disagrees with the item's name, or no patient")
        if not all(_HEX64.match(data[k]) for k in ("image_sha256", "mask_sha256")):
            raise bad("hashes must be sha256 hex digests")
        return cls(data["split"], data["patient"], data["source"], data["op"], dict(data.get("params", {})),
                   data["image"], data["mask"], data["image_sha256"], data["mask_sha256"],
                   dict(data.get("stats", {})), str(data.get("recipe", "")))


def read_manifest(folder: Path) -> tuple[dict[str, Any], list[Item]] | None:
    """The dataset's manifest as (its other fields, its typed items), or None when absent or unusable
    (a warning says why)."""
    path = folder / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = read_json(path)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("items"), list):
            raise TnbcError(f"{path}: no item list")
        items = [Item.from_json(it, str(path)) for it in manifest["items"]]
        _check_membership(folder, manifest.get("splits"), items)
        return {k: v for k, v in manifest.items() if k != "items"}, items
    except TnbcError as exc:
        log.warning("%s; ignoring the manifest", str(exc)[:300])
    return None


def _check_membership(folder: Path, splits: Any, items: list[Item]) -> None:
    """Each item's split is re-derived from its patient: the manifest's assignment must equal
    splits.json's, and put the item's patient in the item's split (a hand-edited manifest that moves
    test images into train is refused, never packed)."""
    path = folder / "splits.json"
    if not (isinstance(splits, dict) and set(splits) == set(SPLIT_NAMES)
            and all(isinstance(v, list) for v in splits.values())):
        raise TnbcError(f"{folder / 'manifest.json'}: malformed split assignment")
    if not path.is_file() or read_json(path) != splits:
        raise TnbcError(f"{path}: missing or differs from the manifest's split assignment")
    split_of = {p: s for s, patients in splits.items() for p in patients}
    for it in items:
        if split_of.get(it.patient) != it.split:
            raise TnbcError(f"{folder / 'manifest.json'}: item {it.name} of patient {it.patient} listed in "
                            f"{it.split}, but splits.json puts the patient in {split_of.get(it.patient)}")


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def write_stamps(folder: Path, items: list[Item]) -> None:
    """Record each item file's (size, mtime_ns, inode, sha256) in `folder`/.stamps.json, so that the next
    build can trust an untouched file without re-reading it (git's index, for the dataset)."""
    start_ns = time.time_ns()  # before any stat: a later write to a file gives it an mtime past this
    files = {path: [*(_stat(folder / path) or [-1, -1, -1]), digest] for it in items
             for path, digest in ((it.image, it.image_sha256), (it.mask, it.mask_sha256))}
    write_json(folder / STAMPS, {"start_ns": start_ns, "files": files})


def _read_stamps(folder: Path) -> tuple[int, dict[str, list]]:
    try:
        data = read_json(folder / STAMPS)
        return int(data["start_ns"]), dict(data["files"])
    except (OSError, ValueError, KeyError, TypeError, TnbcError):  # absent or damaged: trust nothing
        return 0, {}


def intact(folder: Path, items: list[Item], verify: bool = False) -> dict[str, Item]:
    """Items whose files still match their sha256, by image path. A file is re-hashed unless its size,
    mtime and inode equal its stamp's and its mtime is older than the stamping by RACY_NS (else a write
    in the same clock tick could hide); `verify` re-hashes every file."""
    start_ns, stamps = (0, {}) if verify else _read_stamps(folder)

    def same(path: str, digest: str) -> bool:
        stat = _stat(folder / path)
        if stat is not None and stamps.get(path) == [*stat, digest] and stat[1] < start_ns - RACY_NS:
            return True
        return stat is not None and os.path.isfile(folder / path) and sha256_file(folder / path) == digest

    def ok(it: Item) -> bool:
        return all(same(path, digest) for path, digest in ((it.image, it.image_sha256), (it.mask, it.mask_sha256)))

    with ThreadPoolExecutor(2) as threads:  # hashlib releases the GIL on large buffers
        return {it.image: it for it, good in zip(items, threads.map(ok, items)) if good}


def read_journal(path: Path) -> dict[str, Item]:
    """Items a killed build journaled (one JSON object a line) whose files exist beside the journal."""
    done: dict[str, Item] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                item = Item.from_json(json.loads(line), str(path))
            except (ValueError, TnbcError):  # the line a kill cut short
                continue
            if (path.parent / item.image).is_file() and (path.parent / item.mask).is_file():
                done[item.image] = item
    return done


def setting_stats(items: list[Item], op: str,
                  keys: tuple[str, ...] = ("mean_disp_px", "p99_disp_px")) -> list[dict[str, Any]]:
    """What an op measured, per parameter setting: the mean over its items of each stat in `keys` (the
    displacement of random-field ops in pixels; the colour shift of `stain`)."""
    groups: dict[tuple, list[dict[str, float]]] = {}
    for it in items:
        if it.op == op:
            groups.setdefault(tuple(sorted(it.params.items())), []).append(it.stats)
    return [{**dict(params), "items": len(st), **{k: round(float(np.mean([s[k] for s in st])), 3) for k in keys}}
            for params, st in sorted(groups.items())]
