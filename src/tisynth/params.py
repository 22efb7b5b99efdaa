"""Nested parameter dictionaries: merging them, and refusing unknown keys with the nearest valid name."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge into a copy of ``base``: nested dicts merge key by key, ``override`` wins
    for everything else (lists are replaced, not concatenated)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def unknown_key_message(key: str, valid: Iterable[str], where: str = "") -> str:
    """``unknown parameter a.b.typo; did you mean a.b.type? (valid: ...)``."""
    valid = sorted(valid)
    path = f"{where}.{key}" if where else key
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean {where + '.' if where else ''}{near[0]}?" if near else ""
    return f"unknown parameter {path}{hint} (valid: {valid})"


def check_keys(params: Mapping[str, Any], known: Mapping[str, Any], where: str, error: type[Exception]) -> None:
    """Refuse any key of ``params`` that ``known`` (a tree of defaults) lacks, at any depth.

    Where ``known`` holds a mapping, the value's keys are checked against it in turn; where it
    holds anything else (a leaf, ``null``), the value is free-form.
    """
    for key, value in params.items():
        if key not in known:
            raise error(unknown_key_message(str(key), known, where))
        sub = known[key]
        if isinstance(sub, Mapping) and isinstance(value, Mapping):
            check_keys(value, sub, f"{where}.{key}" if where else str(key), error)


def dataclass_from_mapping(cls: type, params: Mapping[str, Any] | None, error: type[Exception], message: str) -> Any:
    """Build the dataclass ``cls`` from a mapping; an unknown key raises ``error`` with
    ``message`` followed by the key, the nearest valid name and the allowed keys."""
    params = dict(params or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        near = {k: difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.6) for k in unknown}
        hints = "; ".join(f"{k}: did you mean {n[0]}?" for k, n in near.items() if n)
        raise error(f"{message} {unknown}{' (' + hints + ')' if hints else ''}; allowed: {sorted(known)}")
    return cls(**params)


def split_names(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """A list of split names from a parameter: ``[train, val]``, ``"train"``, ``"train,val"`` or
    ``"train val"`` (command-line friendly); ``None`` stays ``None`` (all splits)."""
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(v for v in value.replace(",", " ").split() if v)
    return tuple(str(v) for v in value)
