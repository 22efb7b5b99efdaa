"""Small helpers for nested parameter dictionaries."""

from __future__ import annotations

import copy
from collections.abc import Mapping
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


def dataclass_from_mapping(cls: type, params: Mapping[str, Any] | None, error: type[Exception], message: str) -> Any:
    """Build the dataclass ``cls`` from a mapping; unknown keys raise ``error`` with
    ``message`` followed by the unknown and the allowed keys."""
    params = dict(params or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise error(f"{message} {unknown}; allowed: {sorted(known)}")
    return cls(**params)
