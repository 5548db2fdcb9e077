"""Reading the dataset stage's on-disk contract: `manifest.json`, its items, and the build journal.

Everything read back is checked for shape before use: an item's image must be `SPLIT/images/NAME.png`
and its mask `SPLIT/masks/NAME.png`, so a damaged or hostile manifest can never make a stage read or
link a path outside the dataset folder.
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.io import read_json, sha256_file

log = logging.getLogger(__name__)

_ITEM_PATH = re.compile(r"^(train|valid|test)/images/[A-Za-z0-9_.\-]+\.png$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def well_formed(item: Any) -> bool:
    """An item dict whose paths stay inside the dataset and whose hashes look like sha256 digests."""
    if not isinstance(item, dict):
        return False
    image, mask = item.get("image"), item.get("mask")
    return (isinstance(image, str) and bool(_ITEM_PATH.match(image)) and ".." not in image
            and mask == image.replace("/images/", "/masks/", 1)
            and all(isinstance(item.get(k), str) and _HEX64.match(item[k]) for k in ("image_sha256", "mask_sha256")))


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The dataset's manifest, or None when absent or unusable (a warning says which)."""
    path = folder / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = read_json(path)
        if isinstance(manifest, dict) and isinstance(manifest.get("items"), list) and all(
                well_formed(it) for it in manifest["items"]):
            return manifest
    except TnbcError:
        pass
    log.warning("%s: unreadable or malformed manifest; ignoring it", path)
    return None


def intact(folder: Path, items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Items whose files still match their sha256 (decided by content, never timestamps), by image path."""
    def ok(it: dict[str, Any]) -> bool:
        return all((folder / it[k]).is_file() and sha256_file(folder / it[k]) == it[f"{k}_sha256"]
                   for k in ("image", "mask"))

    with ThreadPoolExecutor(2) as threads:  # hashlib releases the GIL on large buffers
        return {it["image"]: it for it, good in zip(items, threads.map(ok, items)) if good}


def read_journal(path: Path) -> dict[str, dict[str, Any]]:
    """Items a killed build journaled (one JSON object a line) whose files exist beside the journal."""
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:  # the line a kill cut short
                continue
            if well_formed(item) and (path.parent / item["image"]).is_file() and (path.parent / item["mask"]).is_file():
                done[item["image"]] = item
    return done


def setting_stats(items: list[dict[str, Any]], op: str) -> list[dict[str, Any]]:
    """Measured displacement per parameter setting of a random-field op: the mean over its items of
    each item's mean and 99th-percentile displacement magnitude, in pixels."""
    groups: dict[tuple, list[dict[str, float]]] = {}
    for it in items:
        if it["op"] == op:
            groups.setdefault(tuple(sorted(it["params"].items())), []).append(it["stats"])
    return [{**dict(params), "items": len(st),
             "mean_disp_px": round(float(np.mean([s["mean_disp_px"] for s in st])), 3),
             "p99_disp_px": round(float(np.mean([s["p99_disp_px"] for s in st])), 3)}
            for params, st in sorted(groups.items())]
