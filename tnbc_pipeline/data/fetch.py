"""Download the TNBC release archive from Zenodo: resumable, size- and digest-checked, atomic.

The partial download lives in `<out>/TNBC_NucleiSegmentation.zip.part`; a rerun resumes it with an
HTTP Range request (or restarts when the server ignores ranges). Only a verified archive is renamed to
its final name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tnbc_pipeline.errors import TnbcError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """Where the release comes from and what it must hash to."""

    url: str = "https://zenodo.org/records/2579118/files/TNBC_NucleiSegmentation.zip?download=1"  # v1.1
    filename: str = "TNBC_NucleiSegmentation.zip"
    size: int | None = 25_232_361  # published byte size of the v1.1 archive (None: unchecked)
    md5: str | None = "1605712a752b201b57eacc8f866adb4f"  # published digest of the v1.1 archive
    sha256: str | None = None  # optional extra pin (one public loader pins the v1.0 archive's)


def _digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def verify(path: Path, source: Source) -> None:
    """Raise TnbcError naming the file unless its size and digests match `source`."""
    size = path.stat().st_size
    if source.size is not None and size != source.size:
        raise TnbcError(f"{path}: {size} bytes, expected {source.size}")
    md5, sha = _digests(path)
    if source.md5 and md5 != source.md5:
        raise TnbcError(f"{path}: MD5 {md5} does not match the published {source.md5}")
    if source.sha256 and sha != source.sha256:
        raise TnbcError(f"{path}: SHA-256 {sha} does not match the expected {source.sha256}")


def fetch(out: Path, source: Source = Source(), progress: bool = True, timeout: float = 30.0) -> Path:
    """Download `source` into folder `out` (resuming a partial download); return the verified archive."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = out / source.filename
    if final.exists():
        verify(final, source)
        log.info("%s already present and verified", final)
        return final
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(source.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: the part is complete (verified below)
            response = None
        else:
            raise TnbcError(f"{source.url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TnbcError(f"{source.url}: cannot connect ({reason}); offline? Download it by hand into {out}") from exc
    if response is not None:
        with response:
            resumed = response.status == 206
            if have and not resumed:
                log.info("server ignored the range request; restarting the download")
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length else source.size
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=source.filename, disable=not progress
            ) as bar:
                try:
                    while block := response.read(1 << 16):
                        f.write(block)
                        bar.update(len(block))
                except OSError as exc:
                    raise TnbcError(f"{source.url}: download interrupted ({exc}); rerun to resume") from exc
    size = part.stat().st_size
    if source.size is not None and size < source.size:  # cut short: keep the part for the next run
        raise TnbcError(f"{part}: incomplete download ({size} of {source.size} bytes); rerun to resume")
    try:
        verify(part, source)
    except TnbcError:
        part.unlink()  # a complete but wrong file would otherwise be "resumed" forever
        raise
    os.replace(part, final)
    log.info("downloaded and verified %s", final)
    return final
