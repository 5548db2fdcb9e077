"""The dataset stage: release -> patient split -> augmented PNG pairs + splits.json + manifest.json.

Layering: `render_case` (one source image -> its variant files) is called by `build_dataset` (the folder
driver: validation, plan, diff against the previous manifest, worker pool, progress bar, atomic swap).

Incremental: each output item carries a `recipe` hash of everything that determines its bytes (source
hashes, op, params, seed, PNG settings, render version). An item whose recipe is unchanged and whose
files still match their manifest sha256 is hard-linked into the new version instead of re-rendered. Files
are re-hashed only when their size, mtime or inode differ from what the last build recorded in
`.stamps.json` (or `verify`), so an unchanged dataset is checked in milliseconds, not by re-reading it.

Atomic: the new version is built in `.<out>.partial/` beside the output and swapped in with two
renames; a killed build leaves the previous dataset intact, and the next run resumes from the
items already rendered into the staging folder (listed in its journal).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from tnbc_pipeline import __version__, identity
from tnbc_pipeline.config import SPLITS, DatasetConfig, config_hash, to_dict
from tnbc_pipeline.data import augment, manifest, splits
from tnbc_pipeline.data.layouts import open_release
from tnbc_pipeline.data.raw import Case, Release
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.io import (atomic_write_bytes, encode_png, folder_lock, link_or_copy, recover_dir,
                              replace_dir, sha256_bytes, staging_dir, write_json)

log = logging.getLogger(__name__)

RENDER_VERSION = 1  # bump when rendering code changes the bytes of any variant: forces a re-render
OWNED = frozenset({*SPLITS, "manifest.json", "splits.json", "config.json", ".journal.jsonl", manifest.STAMPS,
                   identity.FILE})
JOURNAL = ".journal.jsonl"


def _foreign(name: str) -> bool:
    """Entries of a dataset folder the dataset stage does not write (a later stage's `tfrecords/`)."""
    return name not in OWNED


@dataclass
class BuildSummary:
    """What a build did, per split and in total; `changed` is False when the dataset was up to date."""

    out: Path
    rows: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> patients/sources/items/rendered/reused
    deleted: int = 0
    seconds: float = 0.0
    changed: bool = True


def _recipe(cfg: DatasetConfig, sources: dict[str, dict], key: str, variant: augment.Variant) -> str:
    src = sources[key]
    text = json.dumps([RENDER_VERSION, cfg.seed, cfg.png_compression, cfg.png_strategy, cfg.png_filter,
                       cfg.mask_threshold,
                       src["image_sha256"], src["mask_sha256"], variant.op, variant.params])
    return hashlib.sha256(text.encode()).hexdigest()


def dataset_identity(cfg: DatasetConfig, sources: dict[str, dict]) -> identity.Identity:
    """The dataset folder's identity: its settings, the render version and the release's source hashes."""
    return identity.Identity("dataset", {"config": to_dict(cfg), "render_version": RENDER_VERSION},
                             {"release": identity.digest_of(sources)})


def render_case(release: Release, case: Case, split: str, variants: list[augment.Variant],
                cfg: DatasetConfig, out: Path) -> list[manifest.Item]:
    """Render `variants` of one source into `out/{split}/{images,masks}/`; return their manifest items."""
    image, mask, _, _ = release.load(case)
    items = []
    for variant in variants:
        rng = np.random.default_rng(augment.variant_seed(cfg.seed, case.key, variant))
        img, msk, stats = augment.apply(variant, image, mask, rng)
        digests = {}
        for kind, arr in (("image", img), ("mask", msk)):
            data = encode_png(arr, cfg.png_compression, cfg.png_strategy, cfg.png_filter)
            atomic_write_bytes(out / manifest.item_path(split, kind, case.key, variant.suffix), data)
            digests[kind] = sha256_bytes(data)
        items.append(manifest.Item.create(split, case.patient, case.key, variant.op, variant.suffix,
                                          variant.params_dict, digests["image"], digests["mask"], stats))
    return items


_WORKER: dict[str, Any] = {}


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, killed but not yet reaped, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def _die_with(command: int) -> None:
    """End this worker when the command that started it ends, however it ends (SIGKILL included).
    A forkserver worker's parent is the forkserver, not the command: the kernel's parent-death signal
    covers the forkserver, a watcher thread the command itself."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG (Linux)

    def watch() -> None:
        while _alive(command):
            time.sleep(0.25)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-command", daemon=True).start()


def _init_worker(release: Release, cfg: DatasetConfig, out: Path, command: int | None = None) -> None:
    cv2.setNumThreads(1)  # parallelism comes from the processes; avoid oversubscribing the cores
    if command is not None:
        _die_with(command)
    _WORKER.update(release=release, cfg=cfg, out=out)


def _render_task(task: tuple[Case, str, list[augment.Variant]]) -> list[manifest.Item]:
    case, split, variants = task
    return render_case(_WORKER["release"], case, split, variants, _WORKER["cfg"], _WORKER["out"])


def _check_paths(raw: Path, out: Path) -> None:
    raw_r, out_r = raw.resolve(), out.resolve()
    if raw_r == out_r or raw_r in out_r.parents or out_r in raw_r.parents:
        raise TnbcError(f"{out}: output folder overlaps the raw release {raw}; choose a separate folder")


def _source_record(release: Release, case: Case, image_bytes: bytes, mask_bytes: bytes) -> dict[str, Any]:
    return {"patient": case.patient, "image": release.relative(case.image), "image_sha256": sha256_bytes(image_bytes),
            "mask": release.relative(case.mask), "mask_sha256": sha256_bytes(mask_bytes)}


def _validate_sources(release: Release, current: dict[str, Any] | None, cfg: DatasetConfig) -> dict[str, dict]:
    """Hash every source pair and decode-check it before anything is written. A pair whose bytes
    and mask threshold equal the previous build's was checked then, so only its hash is recomputed."""
    known = {}
    if current and current.get("config", {}).get("mask_threshold") == cfg.mask_threshold:
        known = {(s.get("image_sha256"), s.get("mask_sha256")) for s in current.get("sources", {}).values()}
    sources = {}
    for case in release.cases:
        image_bytes, mask_bytes = release.read_bytes(case.image), release.read_bytes(case.mask)
        sources[case.key] = _source_record(release, case, image_bytes, mask_bytes)
        if (sources[case.key]["image_sha256"], sources[case.key]["mask_sha256"]) not in known:
            release.decode(case, image_bytes, mask_bytes)  # raises TnbcError naming the file on any problem
    return sources


def expected_identity(raw: Path, cfg: DatasetConfig) -> identity.Identity:
    """The identity `build_dataset(raw, ..., cfg)` would record, from the release's bytes alone (nothing
    decoded or written): experiments compare it to decide whether a fold's results still hold."""
    release = open_release(raw, cfg.mask_threshold, cfg.layout)
    return dataset_identity(cfg, {c.key: _source_record(release, c, release.read_bytes(c.image),
                                                        release.read_bytes(c.mask)) for c in release.cases})


Plan = dict[str, tuple[Case, str, augment.Variant, str]]  # image path -> (case, split, variant, recipe)


def _plan(release: Release, assignment: dict[str, list[str]], cfg: DatasetConfig, sources: dict) -> Plan:
    split_of = {p: s for s, ids in assignment.items() for p in ids}
    plan: Plan = {}
    for split in SPLITS:
        variants = augment.plan_variants(cfg.augment, split)
        for case in release.cases:
            if split_of.get(case.patient) == split:
                for v in variants:
                    path = manifest.item_path(split, "image", case.key, v.suffix)
                    plan[path] = (case, split, v, _recipe(cfg, sources, case.key, v))
    return plan


def _start_pool(workers: int, release: Release, cfg: DatasetConfig, staging: Path) -> ProcessPoolExecutor:
    """Start the worker processes now, so their start-up overlaps the main process's hashing."""
    # forkserver: never fork a parent whose cv2 may hold threads; the preload spares each worker
    # re-importing numpy/cv2.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    pool = ProcessPoolExecutor(workers, ctx, _init_worker, (release, cfg, staging, os.getpid()))
    for _ in range(workers):
        pool.submit(int)  # a no-op that makes the executor spawn its processes
    return pool


def _render_all(tasks: list[tuple[Case, str, list[augment.Variant]]], plan: Plan, pool: ProcessPoolExecutor | None,
                release: Release, cfg: DatasetConfig, staging: Path, progress: bool) -> list[manifest.Item]:
    """Render tasks (in `pool`, or here when None), journaling each finished item with its recipe."""
    done: list[manifest.Item] = []
    bar = tqdm(total=sum(len(v) for _, _, v in tasks), unit="pair", desc="render", disable=not progress)
    with open(staging / JOURNAL, "a") as journal:
        def finish(rendered: list[manifest.Item]) -> None:
            items = [item.with_recipe(plan[item.image][3]) for item in rendered]
            for item in items:
                journal.write(json.dumps(item.to_json()) + "\n")
            journal.flush()
            done.extend(items)
            bar.update(len(items))

        if pool is None:
            _init_worker(release, cfg, staging)
            for task in tasks:
                finish(_render_task(task))
        else:
            for future in as_completed([pool.submit(_render_task, t) for t in tasks]):
                finish(future.result())
    bar.close()
    return done


def _remove_unplanned(staging: Path, plan: Plan) -> None:
    """Drop files a killed build under an older config left in the staging folder."""
    wanted = {p for p in plan} | {p.replace("/images/", "/masks/") for p in plan}
    for split in SPLITS:
        for kind in ("images", "masks"):
            for f in (staging / split / kind).iterdir():
                if f"{split}/{kind}/{f.name}" not in wanted:
                    f.unlink()


def _rows(assignment: dict[str, list[str]], plan: Plan, rendered: set[str]) -> dict[str, dict[str, int]]:
    rows = {}
    for split in SPLITS:
        paths = [p for p, entry in plan.items() if entry[1] == split]
        rows[split] = {"patients": len(assignment[split]), "sources": len({plan[p][0].key for p in paths}),
                       "items": len(paths), "rendered": len([p for p in paths if p in rendered]),
                       "reused": len([p for p in paths if p not in rendered])}
    return rows


def build_dataset(raw: Path, out: Path, cfg: DatasetConfig, workers: int | None = None,
                  force: bool = False, progress: bool = True, verify: bool = False) -> BuildSummary:
    """Build or update the dataset at `out` from the release at `raw`; see the module docstring."""
    start = time.perf_counter()
    raw, out = Path(raw), Path(out)
    workers = workers or os.cpu_count() or 1
    _check_paths(raw, out)
    identity.claim(out, "dataset")  # a refusal writes nothing, not even the lock (a swap never leaves out foreign)
    with folder_lock(out):
        recover_dir(out, keep=_foreign)
        identity.claim(out, "dataset")
        release = open_release(raw, cfg.mask_threshold, cfg.layout)
        current_manifest = manifest.read_manifest(out)
        current, old_items = current_manifest if current_manifest else (None, [])
        sources = _validate_sources(release, current, cfg)
        assignment = splits.assign(release.patients, cfg.split)
        plan = _plan(release, assignment, cfg, sources)
        head: dict[str, Any] = {"tool": "tnbc_pipeline", "version": __version__, "render_version": RENDER_VERSION,
                "config": to_dict(cfg), "config_hash": config_hash(cfg), "sources": sources, "splits": assignment}

        head = json.loads(json.dumps(head))  # JSON types (lists, not tuples), to compare with the manifest
        wanted = dataset_identity(cfg, sources)
        old_identity = identity.read(out)
        same_identity = old_identity is not None and old_identity.digest == wanted.digest
        summary = BuildSummary(out=out, deleted=len({it.image for it in old_items} - set(plan)))
        staging = staging_dir(out)
        if force and staging.exists():
            shutil.rmtree(staging)
        journal = manifest.read_journal(staging / JOURNAL)
        # Reuse candidates: same recipe in the current manifest, or already rendered by a killed run.
        candidates = [] if force else [it for it in old_items if it.image in plan and it.recipe == plan[it.image][3]]
        resumed = {p for p, it in journal.items() if p in plan and it.recipe == plan[p][3]}
        missing = set(plan) - {it.image for it in candidates} - resumed
        with contextlib.ExitStack() as stack:
            pool = None
            if missing and workers > 1:
                pool = _start_pool(workers, release, cfg, staging)
                stack.callback(pool.shutdown, cancel_futures=True)
            reuse = manifest.intact(out, candidates, verify)  # hashing overlaps the workers' start-up
            if same_identity and current and len(reuse) == len(plan) == len(old_items) and all(
                    current.get(k) == v for k, v in head.items()):
                if not (out / manifest.STAMPS).exists():  # made before stamps: spare the next check the reading
                    manifest.write_stamps(out, old_items)
                summary.changed, summary.rows = False, _rows(assignment, plan, rendered=set())
                summary.seconds = time.perf_counter() - start
                return summary

            if out.exists():
                diffs = identity.differences(old_identity, wanted) or ["files differ from the manifest"]
                log.info("%s; regenerating what changed", identity.describe(out, diffs))
            for split in SPLITS:
                for kind in ("images", "masks"):
                    (staging / split / kind).mkdir(parents=True, exist_ok=True)
            items: dict[str, manifest.Item] = {}
            todo: dict[tuple[str, str], list[augment.Variant]] = {}
            for path, (case, split, variant, _) in plan.items():
                if path in resumed:
                    items[path] = journal[path]
                elif path in reuse:
                    for rel in (reuse[path].image, reuse[path].mask):
                        (staging / rel).unlink(missing_ok=True)
                        link_or_copy(out / rel, staging / rel)
                    items[path] = reuse[path]
                else:
                    todo.setdefault((case.key, split), []).append(variant)
            cases = {c.key: c for c in release.cases}
            tasks = [(cases[key], split, variants) for (key, split), variants in sorted(todo.items())]
            for item in _render_all(tasks, plan, pool, release, cfg, staging, progress):
                items[item.image] = item
        rendered = {p for p in items if p not in reuse and p not in resumed}

        _remove_unplanned(staging, plan)
        ordered = [items[p] for p in plan]
        result = {**head, "elastic": manifest.setting_stats(ordered, "elastic"),
                  "distort": manifest.setting_stats(ordered, "distort"),
                  "stain": manifest.setting_stats(ordered, "stain", ("mean_abs_rgb_shift",)),
                  "items": [it.to_json() for it in ordered]}
        write_json(staging / "splits.json", assignment)
        write_json(staging / "config.json", to_dict(cfg))
        write_json(staging / "manifest.json", result)
        manifest.write_stamps(staging, ordered)  # a folder rename keeps each file's inode and mtime
        identity.write(staging, wanted)
        (staging / JOURNAL).unlink()
        replace_dir(out, staging, keep=_foreign)
        summary.rows = _rows(assignment, plan, rendered)
        summary.seconds = time.perf_counter() - start
        return summary
