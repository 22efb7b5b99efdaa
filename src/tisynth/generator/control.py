"""Control encodings: index-space masks -> the mask ControlNet's conditioning image.

Masks are index-space (``0..K-1`` real classes, :data:`tisynth.classes.IGNORE_INDEX` = ignore),
shape ``B×H×W`` (uint8 or any integer dtype). Two encodings exist:

* ``onehot`` (default): ``K`` channels, channel ``k`` is 1 where the mask is ``k``; ignored
  pixels are all zeros. ``K`` is the registry's ``num_classes``.
* ``authors``: what the released TISynth code feeds its ControlNet (METHOD §1.3): three
  identical channels holding ``index / 255``, so ignore becomes 1.0. Needed only for
  compatibility with checkpoints trained that way.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from tisynth.classes import IGNORE_INDEX
from tisynth.errors import TisynthError

ControlEncoding = Literal["onehot", "authors"]
CONTROL_ENCODINGS: tuple[str, ...] = ("onehot", "authors")


class ControlError(TisynthError, ValueError):
    """A mask or a control setting that cannot be encoded."""


def control_channels(num_classes: int, encoding: str = "onehot") -> int:
    """Number of channels of the control image for ``num_classes`` classes and ``encoding``."""
    _check_encoding(encoding)
    if num_classes < 1:
        raise ControlError(f"num_classes must be at least 1, got {num_classes}")
    return num_classes if encoding == "onehot" else 3


def encode_control(
    masks: torch.Tensor | np.ndarray,
    num_classes: int,
    encoding: str = "onehot",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Encode index-space masks ``B×H×W`` (or one ``H×W`` mask) as a ``B×C×H×W`` control image.

    Args:
        masks: integer masks with values in ``0..num_classes-1`` or 255 (ignore).
        num_classes: K, from the class registry.
        encoding: ``onehot`` (K channels, ignore = all zeros) or ``authors`` (3 × index/255).
        dtype, device: of the result (device defaults to the masks' device).

    Raises:
        ControlError: for a wrong shape, a non-integer dtype or values that are neither a class
            index nor the ignore index.
    """
    _check_encoding(encoding)
    m = torch.as_tensor(np.ascontiguousarray(masks) if isinstance(masks, np.ndarray) else masks)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ControlError(f"masks must be B×H×W (or H×W) index masks, got shape {tuple(m.shape)}")
    if m.dtype.is_floating_point or m.dtype == torch.bool:
        raise ControlError(f"masks must have an integer dtype (index space), got {m.dtype}")
    if device is not None:
        m = m.to(device)
    m = m.long()
    bad = (m >= num_classes) & (m != IGNORE_INDEX) | (m < 0)
    if bool(bad.any()):
        values = torch.unique(m[bad])[:10].tolist()
        raise ControlError(
            f"mask value(s) {values} are neither a class index 0..{num_classes - 1} nor the ignore "
            f"index {IGNORE_INDEX}; is the mask in index space and the registry the right one?"
        )
    if encoding == "onehot":
        ignore = m == IGNORE_INDEX
        index = torch.where(ignore, torch.zeros_like(m), m)
        out = torch.nn.functional.one_hot(index, num_classes).permute(0, 3, 1, 2).to(dtype)
        return out * (~ignore).unsqueeze(1).to(dtype)
    return (m.to(dtype) / 255.0).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def _check_encoding(encoding: str) -> None:
    if encoding not in CONTROL_ENCODINGS:
        raise ControlError(f"control encoding must be one of {CONTROL_ENCODINGS}, got {encoding!r}")
