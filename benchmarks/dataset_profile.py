"""Where a dataset pair's time goes, and what other lossless PNG encoders would cost (issue 16 §2).

`stage_profile`: `render_case`'s steps timed one by one on the default 22 variants of a few sources:
decode (read + PNG decode + checks, once per source, shared by its 22 pairs), warp (the variant op),
encode (PNG, image + mask), hash (sha256 of the encoded bytes, in memory), write (atomic file write).
`encoder_table`: the same rendered pairs encoded by each candidate, with the bytes it writes and a check
that cv2 decodes every file back to the exact pixels (any PNG reader must read the dataset).
Run alone: `python benchmarks/dataset_profile.py [--raw DIR]`; `make bench-dataset` prints both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tnbc_pipeline.config import DatasetConfig  # noqa: E402
from tnbc_pipeline.data import augment  # noqa: E402
from tnbc_pipeline.data.layouts import open_release  # noqa: E402
from tnbc_pipeline.io import atomic_write_bytes, encode_png, sha256_bytes  # noqa: E402


def _pairs(release, cfg: DatasetConfig, sources: int):
    """Yield (stage, seconds, rendered pair or None): each source decoded once, then its variants warped."""
    variants = augment.plan_variants(cfg.augment, "train")
    for case in release.cases[:sources]:
        t0 = time.perf_counter()
        image, mask, _, _ = release.load(case)
        yield "decode", time.perf_counter() - t0, None
        for v in variants:
            t0 = time.perf_counter()
            img, msk, _ = augment.apply(v, image, mask, np.random.default_rng(augment.variant_seed(0, case.key, v)))
            yield "warp", time.perf_counter() - t0, (img, msk)


def stage_profile(release, cfg: DatasetConfig, sources: int, out: Path) -> tuple[dict[str, float], list]:
    """-> (ms per pair for each stage, the rendered (image, mask) pairs)."""
    times = {k: 0.0 for k in ("decode", "warp", "encode", "hash", "write")}
    rendered, n = [], 0
    for stage, seconds, pair in _pairs(release, cfg, sources):
        times[stage] += seconds
        if pair is None:
            continue
        rendered.append(pair)
        for kind, arr in zip(("image", "mask"), pair):
            t0 = time.perf_counter()
            data = encode_png(arr, cfg.png_compression, cfg.png_strategy, cfg.png_filter)
            t1 = time.perf_counter()
            sha256_bytes(data)
            t2 = time.perf_counter()
            atomic_write_bytes(out / f"{n}-{kind}.png", data)
            t3 = time.perf_counter()
            times["encode"] += t1 - t0
            times["hash"] += t2 - t1
            times["write"] += t3 - t2
        n += 1
    return {k: 1e3 * v / max(n, 1) for k, v in times.items()}, rendered


def _cv2(level: int, strategy: str, png_filter: str = "adaptive") -> Callable[[np.ndarray], bytes]:
    return lambda arr: encode_png(arr, level, strategy, png_filter)


def _imagecodecs(name: str, level: int, **kw) -> Callable[[np.ndarray], bytes] | None:
    try:
        import imagecodecs
    except ImportError:
        return None
    fn = getattr(imagecodecs, f"{name}_encode", None)
    return None if fn is None else (lambda arr: bytes(fn(arr, level=level, **kw)))


def encoder_table(rendered: list) -> list[tuple[str, float, float, bool]]:
    """(encoder, ms per pair, KB per pair, every file decodes back exactly) for each available candidate."""
    candidates = {"cv2 level 1, rle, adaptive (before)": _cv2(1, "rle"), "cv2 level 0 (stored)": _cv2(0, "default"),
                  "cv2 level 1, default": _cv2(1, "default"), "cv2 level 3, default": _cv2(3, "default"),
                  "cv2 level 1, huffman": _cv2(1, "huffman"),
                  "cv2 level 1, rle, filter sub": _cv2(1, "rle", "sub"),
                  "cv2 level 1, rle, filter up (default)": _cv2(1, "rle", "up"),
                  "cv2 level 1, rle, filter none": _cv2(1, "rle", "none"),
                  "imagecodecs png level 1, rle, sub": _imagecodecs("png", 1, strategy=3, filter=16),
                  "imagecodecs png (libpng) level 1": _imagecodecs("png", 1),
                  "imagecodecs spng level 1": _imagecodecs("spng", 1)}
    rows = []
    for name, encode in candidates.items():
        if encode is None:
            continue
        exact, size = True, 0
        t0 = time.perf_counter()
        encoded = [(encode(img), encode(msk)) for img, msk in rendered]
        seconds = time.perf_counter() - t0
        for (img, msk), (a, b) in zip(rendered, encoded):
            size += len(a) + len(b)
            back_img = cv2.imdecode(np.frombuffer(a, np.uint8), cv2.IMREAD_UNCHANGED)
            back_msk = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)
            exact &= (back_img is not None and np.array_equal(back_img[..., ::-1], img)
                      and back_msk is not None and np.array_equal(back_msk, msk))
        rows.append((name, 1e3 * seconds / len(rendered), size / 1024 / len(rendered), exact))
    return rows


def report(raw: Path, sources: int = 4) -> None:
    cfg = DatasetConfig()
    release = open_release(raw, cfg.mask_threshold, cfg.layout)
    with tempfile.TemporaryDirectory(prefix="tnbc-profile-") as tmp:
        per_pair, rendered = stage_profile(release, cfg, sources, Path(tmp))
    total = sum(per_pair.values())
    print(f"\nper-pair time by stage ({len(rendered)} pairs of {sources} sources, 1 process), ms:")
    for stage, ms in per_pair.items():
        print(f"  {stage:<8} {ms:7.2f}  ({100 * ms / total:4.1f}%)")
    print(f"  {'total':<8} {total:7.2f}")
    print("\nlossless PNG encoders on the same pairs (image + mask), decoded back by cv2:")
    print(f"  {'encoder':<36} {'ms/pair':>8} {'KB/pair':>8}  exact")
    for name, ms, kb, exact in encoder_table(rendered):
        print(f"  {name:<36} {ms:8.2f} {kb:8.1f}  {'yes' if exact else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, help="A release (default: a synthetic 512 px one, made here).")
    parser.add_argument("--sources", type=int, default=4)
    args = parser.parse_args()
    if args.raw:
        report(args.raw, args.sources)
        return
    from tnbc_pipeline.data.synth import write_release

    with tempfile.TemporaryDirectory(prefix="tnbc-profile-raw-") as tmp:
        report(write_release(Path(tmp), seed=0, size=512), args.sources)


if __name__ == "__main__":
    main()
