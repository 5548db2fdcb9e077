"""Pure augmentation ops on arrays, the per-split variant plan, and each variant's derived seed.

Every geometric op computes ONE transform and applies it to both arrays: the image with bilinear
interpolation, the mask with nearest-neighbour, so pairs are aligned by construction and masks stay
exactly {0, 255}. Borders are reflected (no corner-colour fill). Images are RGB uint8 (H, W, 3),
masks uint8 (H, W).

Elastic deformation is the 2-D Simard definition: each displacement component is
alpha * GaussianBlur_sigma(U(-1, 1) noise), one field per axis, applied with cv2.remap.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

from tnbc_pipeline.config import AugmentConfig
from tnbc_pipeline.data.stain import stain_jitter
from tnbc_pipeline.errors import TnbcError

Params = tuple[tuple[str, float], ...]
DISTORT_NODES = 5  # control points per axis of the smooth grid distortion


def _fmt(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Variant:
    """One augmentation of a source image: an op name and its parameters."""

    op: str  # original | hflip | vflip | rotate | elastic | distort | shrink | stain
    params: Params = ()

    @property
    def suffix(self) -> str:
        """File-name part after 'PP_K__', e.g. 'rot30', 'elastic_a110_s8', 'shrink_0.7'."""
        p = dict(self.params)
        if self.op == "rotate":
            return f"rot{_fmt(p['angle'])}"
        if self.op == "elastic":
            return f"elastic_a{_fmt(p['alpha'])}_s{_fmt(p['sigma'])}"
        if self.op in ("distort", "shrink", "stain"):
            return f"{self.op}_{_fmt(next(iter(p.values())))}"
        return self.op

    @property
    def params_dict(self) -> dict[str, float]:
        return dict(self.params)


def plan_variants(cfg: AugmentConfig, split: str) -> list[Variant]:
    """The variants every source image of `split` gets (the original only, unless augmented)."""
    plan = [Variant("original")]
    if split in cfg.splits:
        if cfg.flips:
            plan += [Variant("hflip"), Variant("vflip")]
        plan += [Variant("rotate", (("angle", a),)) for a in cfg.rotations]
        plan += [Variant("elastic", (("alpha", a), ("sigma", s))) for a in cfg.alpha for s in cfg.sigma]
        plan += [Variant("distort", (("strength", s),)) for s in cfg.distort]
        plan += [Variant("shrink", (("ratio", r),)) for r in cfg.shrink]
        plan += [Variant("stain", (("sigma", s),)) for s in cfg.stain]
    suffixes = [v.suffix for v in plan]
    dupes = sorted({s for s in suffixes if suffixes.count(s) > 1})
    if dupes:
        raise TnbcError(f"augment: variant(s) configured twice: {', '.join(dupes)}")
    return plan


def variant_seed(seed: int, key: str, variant: Variant) -> int:
    """A 128-bit seed from (global seed, source key, op, params): independent of order and workers."""
    text = f"{seed}|{key}|{variant.op}|" + ",".join(f"{k}={v!r}" for k, v in variant.params)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "little")


@functools.lru_cache(maxsize=4)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    x.flags.writeable = y.flags.writeable = False
    return x, y


def elastic_field(shape: tuple[int, int], rng: np.random.Generator, alpha: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Simard displacement (dx, dy), float32 (H, W) each, in pixels."""
    fields = []
    for _ in range(2):
        noise = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
        fields.append(cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101) * np.float32(alpha))
    return fields[0], fields[1]


def distort_field(shape: tuple[int, int], rng: np.random.Generator, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Smooth grid distortion: random shifts at 5x5 control points, bicubic in between.

    Control-point shifts are uniform in +-strength * max(H, W) pixels.
    """
    h, w = shape
    amp = np.float32(strength * max(h, w))
    nodes = rng.uniform(-1.0, 1.0, (2, DISTORT_NODES, DISTORT_NODES)).astype(np.float32) * amp
    return tuple(cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC) for n in nodes)  # type: ignore[return-value]


def remap_pair(image: np.ndarray, mask: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample both arrays at (x + dx, y + dy): bilinear image, nearest mask, reflected borders."""
    gx, gy = _grid(*mask.shape)
    mx, my = gx + dx, gy + dy
    out_image = cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    out_mask = cv2.remap(mask, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
    return out_image, out_mask


def affine_pair(image: np.ndarray, mask: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply one 2x3 affine matrix to both arrays (bilinear image, nearest mask, reflected borders)."""
    h, w = mask.shape
    out_image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    out_mask = cv2.warpAffine(mask, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
    return out_image, out_mask


def rotate(image: np.ndarray, mask: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Counter-clockwise rotation about the centre; exact (np.rot90) for multiples of 90 on squares."""
    h, w = mask.shape
    if angle % 90 == 0 and h == w:
        k = int(angle // 90) % 4
        return np.ascontiguousarray(np.rot90(image, k)), np.ascontiguousarray(np.rot90(mask, k))
    return affine_pair(image, mask, cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0))


def shrink(image: np.ndarray, mask: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Zoom out by `ratio` about the centre; the margin is filled by reflection of the content."""
    h, w = mask.shape
    return affine_pair(image, mask, cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 0.0, ratio))


def apply(variant: Variant, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Render one variant -> (image, mask, stats); stats holds the displacement of random fields (px),
    or the mean absolute RGB change of a stain jitter."""
    p = variant.params_dict
    stats: dict[str, float] = {}
    if variant.op == "original":
        out = image, mask
    elif variant.op == "hflip":
        out = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
    elif variant.op == "vflip":
        out = np.ascontiguousarray(image[::-1]), np.ascontiguousarray(mask[::-1])
    elif variant.op == "rotate":
        out = rotate(image, mask, p["angle"])
    elif variant.op == "shrink":
        out = shrink(image, mask, p["ratio"])
    elif variant.op == "stain":  # colour only: the mask is the original's, pixel for pixel
        jittered = stain_jitter(image, rng, p["sigma"])
        out = jittered, mask
        stats = {"mean_abs_rgb_shift": float(np.abs(jittered.astype(np.int16) - image).mean())}
    elif variant.op in ("elastic", "distort"):
        field = elastic_field if variant.op == "elastic" else distort_field
        dx, dy = field(mask.shape, rng, **p)
        out = remap_pair(image, mask, dx, dy)
        magnitude = np.hypot(dx, dy)
        # p99 on every 2nd row and column: a quarter of the sort, and the field is smooth at that scale.
        stats = {"mean_disp_px": float(magnitude.mean()),
                 "p99_disp_px": float(np.percentile(magnitude[::2, ::2], 99))}
    else:
        raise ValueError(f"unknown op {variant.op!r}")
    # Cannot happen with nearest sampling; guard the invariant: a binary mask stays {0, 255}, instance
    # labels (uint16, own data) keep their values (reflected borders may repeat a nucleus's label).
    if mask.dtype == np.uint8 and ((out[1] != 0) & (out[1] != 255)).any():
        raise AssertionError(f"{variant.suffix}: mask left {{0, 255}}")
    if mask.dtype != np.uint8 and not np.isin(out[1], np.unique(mask)).all():
        raise AssertionError(f"{variant.suffix}: mask labels changed")
    return out[0], out[1], stats
