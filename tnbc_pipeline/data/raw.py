"""Find and read a TNBC release: the zip archive, its extracted folder (single or doubled), or a folder
holding `Slide_PP/` and `GT_PP/` directly. Read-only: nothing here ever writes to the release.

`Slide_PP/PP_K.png` pairs with `GT_PP/PP_K.png` by name; the patient is PP.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.io import decode_image, decode_mask, read_regular, sha256_bytes

_MEMBER = re.compile(r"^(?P<root>(?:.*/)?)(?P<kind>Slide|GT)_(?P<pp>\d{2})/(?P<file>[^/]+)$")
_FILE = re.compile(r"^(?P<pp>\d{2})_(?P<k>\d+)\.png$")
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # a TNBC PNG is ~0.5 MB; refuse anything that would inflate beyond this
MAX_DEPTH = 4  # folder search depth: root/TNBC_NucleiSegmentation/TNBC_NucleiSegmentation/Slide_PP/file


@dataclass(frozen=True)
class Case:
    """One annotated image of the release: key 'PP_K', its patient and the two member paths."""

    key: str
    patient: str
    image: str  # path relative to the release path (folder) or zip member name
    mask: str


def _skipped(rel: str) -> bool:
    """macOS resource forks and dot-files are never part of the release."""
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


def _walk(path: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        rel_dir = os.path.relpath(dirpath, path)
        depth = 0 if rel_dir == "." else rel_dir.count(os.sep) + 1
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d)) if depth < MAX_DEPTH else []
        for name in sorted(filenames):  # sorted: the same tree always reads the same way
            rel = name if rel_dir == "." else f"{Path(rel_dir).as_posix()}/{name}"
            if not _skipped(rel):
                found.append(rel)
    return found


def _zip_members(zf: zipfile.ZipFile, path: Path) -> list[str]:
    names, seen = [], set()
    for info in zf.infolist():
        name = info.filename
        if name.startswith("/") or ".." in name.split("/"):
            raise TnbcError(f"{path}: unsafe member path '{name}' in archive")
        if info.is_dir() or _skipped(name):
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise TnbcError(f"{path}: member '{name}' is a symbolic link")
        if name in seen:
            raise TnbcError(f"{path}: duplicate member '{name}' in archive")
        if info.file_size > MAX_MEMBER_BYTES:
            raise TnbcError(f"{path}: member '{name}' declares {info.file_size} bytes (limit {MAX_MEMBER_BYTES})")
        seen.add(name)
        names.append(name)
    return names


class Release:
    """A TNBC release on disk. `cases` is sorted by key; `load` returns validated arrays."""

    def __init__(self, path: Path | str, mask_threshold: int | None = None) -> None:
        self.path = Path(path)
        self.mask_threshold = mask_threshold
        self._zip: zipfile.ZipFile | None = None
        if not self.path.exists():
            raise TnbcError(f"{self.path}: no such file or folder")
        self.is_zip = self.path.is_file()
        if self.is_zip:
            if not zipfile.is_zipfile(self.path):
                raise TnbcError(f"{self.path}: not a zip archive or a release folder")
            members = _zip_members(self._open(), self.path)
        else:
            members = _walk(self.path)
        self.cases = self._pair(members)

    def _open(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise TnbcError(f"{self.path}: corrupted zip archive ({exc})") from exc
        return self._zip

    def __getstate__(self) -> dict:
        # Worker processes reopen the archive themselves; a ZipFile handle does not pickle.
        return {**self.__dict__, "_zip": None}

    def _pair(self, members: list[str]) -> list[Case]:
        roots: set[str] = set()
        images: dict[str, str] = {}
        masks: dict[str, str] = {}
        clash: tuple[str, str, str] | None = None
        for rel in members:
            m = _MEMBER.match(rel)
            if not m:
                continue
            roots.add(m["root"])
            f = _FILE.match(m["file"])
            if not f or f["pp"] != m["pp"]:
                raise TnbcError(f"{self.name(rel)}: unexpected file name (expected {m['pp']}_K.png)")
            key = f"{f['pp']}_{int(f['k'])}"
            found = images if m["kind"] == "Slide" else masks
            if key in found and clash is None:  # 01_1.png and 01_01.png: one key, two files
                clash = (rel, key, found[key])
            found[key] = rel
        if not roots:
            raise TnbcError(f"{self.path}: no Slide_PP/ and GT_PP/ folders found (unrecognised release layout)")
        if len(roots) > 1:
            shown = ", ".join(sorted(r or "./" for r in roots))
            raise TnbcError(f"{self.path}: several releases found ({shown}); point at one of them")
        if clash is not None:  # never pick one of two files silently
            rel, key, other = clash
            raise TnbcError(f"{self.name(rel)}: names the same image {key} as {self.name(other)}; remove one of them")
        for key, rel in images.items():
            if key not in masks:
                raise TnbcError(f"{self.name(rel)}: no matching mask GT_{key[:2]}/{key}.png")
        for key, rel in masks.items():
            if key not in images:
                raise TnbcError(f"{self.name(rel)}: mask without image Slide_{key[:2]}/{key}.png")
        if not images:
            raise TnbcError(f"{self.path}: release holds no images")
        self.root = roots.pop()  # prefix of the folder holding Slide_PP/ ('' when the path itself)
        order = sorted(images, key=lambda k: (k[:2], int(k[3:])))
        return [Case(k, k[:2], images[k], masks[k]) for k in order]

    @property
    def patients(self) -> dict[str, int]:
        """Patient id -> number of images, sorted by id."""
        counts: dict[str, int] = {}
        for case in self.cases:
            counts[case.patient] = counts.get(case.patient, 0) + 1
        return counts

    def relative(self, rel: str) -> str:
        """A member's path below the release root ('Slide_01/01_1.png'), the same for zip and folder."""
        return rel[len(self.root):]

    def name(self, rel: str) -> str:
        """A member's user-facing name for messages: the file path, or archive:member."""
        return f"{self.path}:{rel}" if self.is_zip else str(self.path / rel)

    def read_bytes(self, rel: str) -> bytes:
        """A member's bytes: only regular files (a FIFO or device would block), at most MAX_MEMBER_BYTES;
        any failure of the archive (encrypted or Deflate64 members, bad CRC, truncation) is one TnbcError."""
        if not self.is_zip:
            return read_regular(self.path / rel, MAX_MEMBER_BYTES)
        try:
            return self._open().read(rel)
        except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError, ValueError,
                zlib.error) as exc:  # RuntimeError: encrypted; NotImplementedError: compression method
            raise TnbcError(f"{self.name(rel)}: cannot read ({str(exc)[:200]})") from exc

    def load(self, case: Case) -> tuple[np.ndarray, np.ndarray, str, str]:
        """-> (image RGB uint8 (H,W,3), mask uint8 (H,W) in {0,255}, image sha256, mask sha256)."""
        return self.decode(case, self.read_bytes(case.image), self.read_bytes(case.mask))

    def decode(self, case: Case, image_bytes: bytes, mask_bytes: bytes) -> tuple[np.ndarray, np.ndarray, str, str]:
        """`load` on bytes already read: decode and check the pair."""
        image = decode_image(image_bytes, self.name(case.image))
        mask = decode_mask(mask_bytes, self.name(case.mask), self.mask_threshold)
        if image.shape[:2] != mask.shape:
            raise TnbcError(
                f"{self.name(case.mask)}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        return image, mask, sha256_bytes(image_bytes), sha256_bytes(mask_bytes)
