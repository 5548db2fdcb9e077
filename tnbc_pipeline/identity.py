"""What made an output folder: its identity, recorded in `FOLDER/identity.json` and compared by every stage.

An identity is the stage's resolved settings, the identities of the inputs it read (the upstream
manifest / index / model sha256, or an upstream identity digest) and the tool version. Its digest is the
sha256 of their canonical JSON. Every stage treats a finished and an unfinished output the same way:

    same identity       reuse it (and say so in one info line)
    other identity      recompute where the stage does (dataset, records, eval), or refuse in one line
                        naming the folder and the first setting that differs (train; `--force` or
                        another folder)
    no identity.json    a folder of an older version or not ours: recompute / refuse likewise
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tnbc_pipeline import __version__
from tnbc_pipeline.errors import TnbcError
from tnbc_pipeline.io import read_json, write_json

log = logging.getLogger(__name__)

FILE = "identity.json"
COMMANDS = {"run": "train", "fold": "cv", "peer": "cv --peer"}  # stages whose command has another name


def canonical(obj: Any) -> Any:
    """JSON types only (tuples -> lists), so identities built from dataclasses compare with ones read back."""
    return json.loads(json.dumps(obj, sort_keys=True))


def digest_of(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj`."""
    return hashlib.sha256(json.dumps(canonical(obj), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    """What made one output folder."""

    stage: str  # dataset | records | run | eval | postprocess | infer | fold | cv | study
    settings: dict[str, Any]  # the stage's resolved settings (JSON types)
    inputs: dict[str, str] = field(default_factory=dict)  # input name -> its sha256 or identity digest
    version: str = __version__  # the tool version that made it

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", canonical(self.settings))
        object.__setattr__(self, "inputs", canonical(self.inputs))

    @property
    def digest(self) -> str:
        return digest_of({"stage": self.stage, "settings": self.settings, "inputs": self.inputs,
                          "version": self.version})

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "digest": self.digest, "tool_version": self.version, "inputs": self.inputs,
                "settings": self.settings}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Identity:
        """Parse what `to_json` wrote; a malformed record is a TnbcError naming `where`."""
        ok = (isinstance(data, dict) and isinstance(data.get("stage"), str) and isinstance(data.get("settings"), dict)
              and isinstance(data.get("inputs"), dict) and all(isinstance(v, str) for v in data["inputs"].values())
              and isinstance(data.get("tool_version"), str))
        if not ok:
            raise TnbcError(f"{where}: malformed identity record")
        return cls(data["stage"], data["settings"], data["inputs"], data["tool_version"])


def read(folder: Path) -> Identity | None:
    """The identity recorded in `folder`, or None when there is none (or it does not parse: then a
    warning, and the folder counts as made by something else)."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        return Identity.from_json(read_json(path), str(path))
    except TnbcError as exc:
        log.warning("%s; treating the folder as made with other settings", exc)
        return None


def write(folder: Path, identity: Identity) -> None:
    write_json(Path(folder) / FILE, identity.to_json())


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:12] + "..."


def differences(old: Identity | None, new: Identity) -> list[str]:
    """Human-readable differences, settings first ('epochs: 1 -> 2'); empty when the identities are equal."""
    if old is None:
        return ["no identity.json (made by an older version, or not by this stage)"]
    out = []
    if old.stage != new.stage:
        out.append(f"stage: {old.stage} -> {new.stage}")
    for part, a, b in (("", old.settings, new.settings), ("input ", old.inputs, new.inputs)):
        fa, fb = _flat(a), _flat(b)
        for key in sorted(set(fa) | set(fb), key=lambda k: (k not in fb, k)):
            if fa.get(key, "<absent>") != fb.get(key, "<absent>"):
                out.append(f"{part}{key}: {_short(fa.get(key, '<absent>'))} -> {_short(fb.get(key, '<absent>'))}")
    if old.version != new.version:
        out.append(f"tool version: {old.version} -> {new.version}")
    return out


def describe(folder: Path, diffs: list[str]) -> str:
    """One line: the folder and what differs (the first setting, and how many more)."""
    more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
    return f"{folder}: made with other settings: {diffs[0]}{more}"


def stage_of(folder: Path) -> str | None:
    """The stage named by `folder`'s identity.json (its marker), or None when it has none that parses."""
    found = read(folder)
    return found.stage if found else None


def claim(folder: Path, stage: str) -> None:
    """Refuse, in one line, to write into `folder` unless it does not exist, is empty, or carries the
    marker of `stage` (an identity.json that stage wrote): a stage never treats a folder of the user's,
    or another stage's, as its own. Symbolic links are refused too (they would write elsewhere)."""
    folder = Path(folder)
    if folder.is_symlink():
        raise TnbcError(f"{folder}: is a symbolic link; give the real folder")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise TnbcError(f"{folder}: exists and is not a folder")
    if next(folder.iterdir(), None) is None:
        return
    marker = stage_of(folder)
    if marker != stage:
        made = f"made by `tnbc {COMMANDS.get(marker, marker)}`" if marker else f"holds files tnbc did not write (no {FILE})"
        raise TnbcError(f"{folder}: not empty and {made}; tnbc {COMMANDS.get(stage, stage)} writes only into a "
                        "new or empty folder "
                        "or one it made itself")


def matches(folder: Path, identity: Identity) -> bool:
    """True when `folder` records exactly `identity`."""
    old = read(folder)
    return old is not None and old.digest == identity.digest
