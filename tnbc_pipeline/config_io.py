"""Loading and serialising the config dataclasses, generic over them: TOML + dotted overrides -> a
validated frozen dataclass (`load_config`, `from_dict`), and back to dicts for JSON, hashes and identities.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from tnbc_pipeline.errors import TnbcError

T = TypeVar("T")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check one TOML/CLI value against a field's type hint; return it in the field's type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:  # the dataclass names the unknown choice; here only the type is checked
        if not isinstance(value, str):
            raise TnbcError(f"{key}: expected one of {' | '.join(args)}, got {type(value).__name__} {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise TnbcError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise TnbcError(f"{key}: must be a finite number, got {value}")
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise TnbcError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {type(value).__name__} {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], where: str, prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict; `where` (a file or 'command line') prefixes errors."""
    if not isinstance(data, dict):
        raise TnbcError(f"{where}: [{prefix.rstrip('.')}] must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            raise TnbcError(f"{where}: unknown key '{prefix}{key}'")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        try:
            if dataclasses.is_dataclass(hint):
                kwargs[key] = from_dict(hint, value, where, f"{prefix}{key}.")
            else:
                kwargs[key] = _coerce(value, hint, f"{prefix}{key}")
        except TnbcError as exc:
            raise TnbcError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
    try:
        return cls(**kwargs)
    except TnbcError as exc:
        raise TnbcError(f"{where}: {exc}") from None


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply dotted-key overrides ('augment.alpha': [90.0]) onto a nested dict."""
    out = json.loads(json.dumps(base))
    for dotted, value in overrides.items():
        node = out
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def load_config(cls: type[T], path: Path | None, overrides: dict[str, Any] | None = None) -> T:
    """TOML file (optional) + dotted CLI overrides -> validated frozen `cls`."""
    data: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        from tnbc_pipeline.io import read_text

        try:
            data = tomllib.loads(read_text(Path(path), 1024 * 1024))
        except tomllib.TOMLDecodeError as exc:
            raise TnbcError(f"{path}: invalid TOML ({str(exc)[:200]})") from exc
        from_dict(cls, data, str(path))  # report file errors against the file, before overrides
        where = f"{path} + command line"
    return from_dict(cls, merge(data, overrides or {}), where)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# Metadata of a setting added after identities were first recorded: identities leave it out while it is
# at its default, so every output made before it existed keeps its identity (and is still reused).
LATER = {"identity": "omit_at_default"}


def identity_dict(cfg: Any) -> dict[str, Any]:
    """`to_dict` for identities: the LATER settings at their defaults left out, nested configs likewise."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("identity") == LATER["identity"] and value == f.default:
            continue
        out[f.name] = identity_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def config_hash(cfg: Any) -> str:
    """sha256 of the canonical JSON of a config: equal settings give equal hashes."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()
