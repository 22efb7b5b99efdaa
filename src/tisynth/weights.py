"""Weight files read with a clear error when they are missing, cut short or damaged.

Every weight file tisynth writes goes through an atomic rename, so a crash never leaves half a
file under the real name; a file truncated or damaged afterwards (a full disk, a bad copy) is
refused here with its path instead of an opaque error from deep inside a loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tisynth.errors import TisynthError


class WeightsFileError(TisynthError, ValueError):
    """A weights file that is missing, truncated or not what its name says."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file (on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged headers and sizes
        raise WeightsFileError(f"{path}: cannot be read as safetensors, truncated or corrupt? ({_first_line(exc)})") from exc


def read_torch(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of a file tisynth wrote (optimizer states and the like)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: weights file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise WeightsFileError(f"{path}: cannot be read with torch.load(weights_only=True), truncated or corrupt? "
                               f"({_first_line(exc)})") from exc
