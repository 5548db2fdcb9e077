"""The user's own annotated data: release layouts besides TNBC's (raw.py), read-only alike.

    folders     DIR/images/NAME.{png,jpg,jpeg,tif,tiff} + DIR/masks/NAME.{png,tif,tiff}, paired by stem;
                optional DIR/groups.csv (`image,group`): the patient, slide or centre that a split keeps
                together. Without it every image is its own group (and a warning says patients may leak).
    imagemask   the replaced system's ImageMask dataset: DIR/{train,valid,test}/{images,masks}/NAME.jpg.
                Its own split is ignored (it put augmented copies of one image in train and test); images
                are grouped by their source number (the trailing digits, 1001..1050) unless groups.csv says
                otherwise, and its grey JPEG masks are thresholded (mask_threshold, default 127).

A mask is binary ({0, 255}, {0, 1}; any grey level with `mask_threshold`) -> uint8 {0, 255}, as the TNBC
release's; or instance labels (integers with more than one non-zero value) -> uint16 labels 1..n, kept
exactly, so nuclei that touch stay apart. Names become item keys: characters other than letters, digits,
'.', '-' and single '_' are replaced by '-' (two files that end up with one key are an error).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

import cv2
import numpy as np
from skimage.segmentation import relabel_sequential

from tnbc_pipeline.config import Layout
from tnbc_pipeline.data.raw import Case, Release
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.io import decode_image, read_text, sha256_bytes

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff")  # lossless only: a JPEG mask needs mask_threshold
GROUPS = "groups.csv"
IMAGEMASK_SPLITS = ("train", "valid", "test")
IMAGEMASK_THRESHOLD = 127  # the old masks are grey JPEGs (209-256 at nuclei, REFERENCE.md)
MAX_LABELS = 65535  # uint16


def safe_name(name: str) -> str:
    """A file stem or group -> a name the dataset can use in file names and keys ('' if nothing is left)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    name = re.sub(r"_{2,}", "_", re.sub(r"\.{2,}", ".", name))
    return name.strip("._-")


def mask_array(arr: np.ndarray, name: str, threshold: int | None) -> np.ndarray:
    """A decoded mask (H, W) or (H, W, C) of any integer dtype -> uint8 {0, 255} (binary) or uint16 labels
    1..n (instance labels, renumbered in order of their values). A TnbcError names `name` on anything else."""
    if arr.ndim == 3:
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(arr.shape[2], 3))):
            raise TnbcError(f"{name}: mask has differing colour channels (expected a grey or label mask)")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise TnbcError(f"{name}: expected a 2-D mask, got shape {arr.shape}")
    if threshold is not None:
        return np.where(arr > threshold, 255, 0).astype(np.uint8)
    if arr.dtype.kind not in "ui":
        raise TnbcError(f"{name}: mask of type {arr.dtype} (expected integers); give mask_threshold to binarize it")
    if arr.dtype.kind == "i" and (arr < 0).any():
        raise TnbcError(f"{name}: mask has negative values")
    values = np.unique(arr)
    nonzero = values[values != 0]
    if nonzero.size <= 1:
        return np.where(arr > 0, 255, 0).astype(np.uint8)
    if nonzero.size > MAX_LABELS:
        raise TnbcError(f"{name}: {nonzero.size} instance labels (at most {MAX_LABELS})")
    return relabel_sequential(arr.astype(np.int64))[0].astype(np.uint16)


def _decode_any(data: bytes, name: str, flags: int) -> np.ndarray:
    if name.lower().endswith((".tif", ".tiff")) and flags == cv2.IMREAD_UNCHANGED:
        import tifffile  # any integer dtype (int32 labels included), which cv2 does not read

        try:
            return tifffile.imread(io.BytesIO(data))
        except Exception as exc:  # tifffile raises many types on damaged files
            raise TnbcError(f"{name}: unreadable TIFF ({str(exc)[:200]})") from exc
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if arr is None:
        raise TnbcError(f"{name}: unreadable image")
    return arr


class FolderRelease(Release):
    """Own data as a release: `cases` sorted by (group, key); `load`/`decode` as for the TNBC release,
    except that masks may be instance labels (uint16)."""

    layout = "folders"

    def __init__(self, path: Path | str, mask_threshold: int | None = None) -> None:  # noqa: super not called
        self.path = Path(path)
        self.mask_threshold = mask_threshold
        self._zip = None
        self.is_zip = False
        self.root = ""
        if not self.path.is_dir():
            raise TnbcError(f"{self.path}: not a folder (the {self.layout} layout reads a folder)")
        pairs = self._pairs()
        groups = self._groups([k for k, *_ in pairs])
        self.cases = sorted((Case(k, groups[k], img, msk) for k, img, msk in pairs), key=lambda c: (c.patient, c.key))

    def _files(self, folder: str, suffixes: tuple[str, ...]) -> dict[str, str]:
        """stem -> path relative to the release, of the files in `folder` with those suffixes."""
        base = self.path / folder
        found: dict[str, str] = {}
        for p in sorted(base.iterdir()) if base.is_dir() else []:
            if p.name.startswith(".") or not p.is_file():
                continue
            if p.suffix.lower() not in suffixes:
                log.warning("%s: not one of %s; ignored", p, " ".join(suffixes))
                continue
            if p.stem in found:
                raise TnbcError(f"{p}: names the same image as {self.path / found[p.stem]}; remove one of them")
            found[p.stem] = f"{folder}/{p.name}"
        return found

    def _pair_in(self, folder: str) -> list[tuple[str, str, str]]:
        """(stem, image, mask) of `folder`/images and `folder`/masks, paired by stem; strays are errors."""
        prefix = f"{folder}/" if folder else ""
        images = self._files(f"{prefix}images", IMAGE_SUFFIXES)
        masks = self._files(f"{prefix}masks", MASK_SUFFIXES + (".jpg", ".jpeg"))
        lossy = next((rel for rel in masks.values() if rel.lower().endswith((".jpg", ".jpeg"))), None)
        if lossy and self.mask_threshold is None:
            raise TnbcError(f"{self.path / lossy}: a JPEG mask is lossy (grey edges); give mask_threshold "
                            "(--mask-threshold 127) to binarize it")
        for stem, rel in images.items():
            if stem not in masks:
                raise TnbcError(f"{self.path / rel}: no matching mask {prefix}masks/{stem}.png")
        for stem, rel in masks.items():
            if stem not in images:
                raise TnbcError(f"{self.path / rel}: mask without image {prefix}images/{stem}.*")
        return [(stem, images[stem], masks[stem]) for stem in images]

    def _pairs(self) -> list[tuple[str, str, str]]:
        found = self._pair_in("")
        if not found:
            raise TnbcError(f"{self.path}: no image/mask pairs in images/ and masks/")
        return self._keyed(found)

    def _keyed(self, found: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """(key, image, mask): stems made safe, and two files of one key refused."""
        seen: dict[str, str] = {}
        out = []
        for stem, image, mask in found:
            key = safe_name(stem)
            if not key:
                raise TnbcError(f"{self.path / image}: no usable characters in the name; rename it")
            if key in seen:
                raise TnbcError(f"{self.path / image}: becomes the same key '{key}' as {self.path / seen[key]}; "
                                "rename one of them")
            seen[key] = image
            out.append((key, image, mask))
        return out

    def default_group(self, key: str) -> str:
        return key

    def _groups(self, keys: list[str]) -> dict[str, str]:
        """key -> group, from groups.csv (matched by file name or stem), else `default_group`."""
        path = self.path / GROUPS
        if not path.is_file():
            self.warn_ungrouped()
            return {k: self.default_group(k) for k in keys}
        rows = list(csv.reader(io.StringIO(read_text(path))))
        if not rows or [c.strip().lower() for c in rows[0][:2]] != ["image", "group"]:
            raise TnbcError(f"{path}: first row must be the header 'image,group'")
        groups: dict[str, str] = {}
        for n, row in enumerate(rows[1:], start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not safe_name(row[1].strip()):
                raise TnbcError(f"{path}: line {n}: expected 'image,group', got {','.join(row)[:100]!r}")
            key, group = safe_name(Path(row[0].strip()).stem), safe_name(row[1].strip())
            if groups.get(key, group) != group:
                raise TnbcError(f"{path}: line {n}: image {row[0].strip()} is given two groups")
            groups[key] = group
        missing = [k for k in keys if k not in groups]
        if missing:
            raise TnbcError(f"{path}: no group for image {missing[0]} ({len(missing)} image(s) without one)")
        extra = sorted(set(groups) - set(keys))
        if extra:
            log.warning("%s: %d row(s) name no image here (first: %s); ignored", path, len(extra), extra[0])
        return {k: groups[k] for k in keys}

    def warn_ungrouped(self) -> None:
        log.warning("%s: no %s; every image is its own group, so images of one patient may leak across "
                    "splits (add %s with rows 'image,group')", self.path, GROUPS, GROUPS)

    def decode(self, case: Case, image_bytes: bytes, mask_bytes: bytes) -> tuple[np.ndarray, np.ndarray, str, str]:
        """-> (image RGB uint8 (H, W, 3), mask uint8 {0, 255} or uint16 labels (H, W), image sha256, mask sha256)."""
        name = self.name(case.image)
        if case.image.lower().endswith(".png"):
            image = decode_image(image_bytes, name)  # header checked before any pixel is decoded
        else:
            image = _decode_any(image_bytes, name, cv2.IMREAD_COLOR)[:, :, ::-1]
        mask = mask_array(_decode_any(mask_bytes, self.name(case.mask), cv2.IMREAD_UNCHANGED),
                          self.name(case.mask), self.mask_threshold)
        if image.shape[:2] != mask.shape:
            raise TnbcError(f"{self.name(case.mask)}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                            f"{image.shape[1]}x{image.shape[0]}")
        return np.ascontiguousarray(image), mask, sha256_bytes(image_bytes), sha256_bytes(mask_bytes)


class ImageMaskRelease(FolderRelease):
    """The replaced system's ImageMask dataset (see the module docstring)."""

    layout = "imagemask"

    def __init__(self, path: Path | str, mask_threshold: int | None = None) -> None:
        if mask_threshold is None:
            log.warning("%s: ImageMask masks are grey JPEGs; nucleus = value > %d (set mask_threshold to change)",
                        path, IMAGEMASK_THRESHOLD)
            mask_threshold = IMAGEMASK_THRESHOLD
        super().__init__(path, mask_threshold)
        log.warning("%s: the ImageMask split is ignored (it leaks augmented copies of one image across splits); "
                    "re-split by group", self.path)

    def _pairs(self) -> list[tuple[str, str, str]]:
        found = [pair for split in IMAGEMASK_SPLITS for pair in self._pair_in(split)]
        if not found:
            raise TnbcError(f"{self.path}: no image/mask pairs in {{train,valid,test}}/images and masks/")
        return self._keyed(found)

    def default_group(self, key: str) -> str:
        number = re.search(r"(\d+)$", key)  # 'deformed_alpha_1300_sigmoid_8_1001' -> source image 1001
        return number.group(1) if number else key

    def warn_ungrouped(self) -> None:
        log.warning("%s: no %s; the ImageMask layout lost patient identity: images are grouped by their "
                    "source number, so images of one patient may still leak across splits", self.path, GROUPS)


def detect(path: Path) -> str:
    """The layout of `path`: folders (images/ + masks/), imagemask (train|valid|test/images + masks),
    else tnbc (a zip, or the release's Slide_PP/ + GT_PP/ folders, checked by Release)."""
    if path.is_dir():
        if (path / "images").is_dir() and (path / "masks").is_dir():
            return "folders"
        if any((path / s / "images").is_dir() and (path / s / "masks").is_dir() for s in IMAGEMASK_SPLITS):
            return "imagemask"
    return "tnbc"


def open_release(path: Path | str, mask_threshold: int | None = None, layout: Layout = "auto") -> Release:
    """The release at `path` read in `layout` (auto: `detect`)."""
    path = Path(path)
    if not path.exists():
        raise TnbcError(f"{path}: no such file or folder")
    chosen = detect(path) if layout == "auto" else layout
    if chosen == "folders":
        return FolderRelease(path, mask_threshold)
    if chosen == "imagemask":
        return ImageMaskRelease(path, mask_threshold)
    return Release(path, mask_threshold)
