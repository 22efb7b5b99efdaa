"""Random photometric sensor styles: the generator's style pairs and the segmenter's augmentation.

Two users. (1) The generator's **style pairs**, where the look is only knowable from the Ref.

TISynth trains its Ref path on a Ref made from the target image itself. A model trained from
scratch then predicts the target's colours from the mask, the prompt and the noisy latent as
well without the Ref, and the Ref path never earns its place. Style pairs remove that shortcut:
a training item draws a style from a generic family (per-band gain and offset, gamma,
saturation, contrast, blur, haze, sensor noise) and the *same* style is applied to the target
and to its Ref, where the Ref is a *different tile*. Content cannot be copied from the Ref, and
the style cannot be guessed without it.

The family is a set of ranges (:class:`StyleFamily`, parameters ``train_generator.style_pairs.family``);
:meth:`StyleFamily.draw` turns a seed into one concrete :class:`Style`, and :func:`apply_style`
renders a uint8 tile in it. Everything is seeded: the same (seed, set) gives the same style,
and the noise of a tile depends on the style's seed and the tile's name only.

(2) The segmenter's **sensor-style augmentation** (``segmenter.data.style_augment``, the
``RandomSensorStyle`` transform of :mod:`tisynth.segmentation.mm`): each training crop is
rendered, with a given probability, in a style drawn from the same kind of family, so the
segmenter does not learn features that hold for one sensor only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from tisynth.errors import TisynthError


class StyleError(TisynthError, ValueError):
    """A style family or style-pair setting that cannot be used."""


# key -> (lowest allowed value, highest allowed value) of the range's ends
_LIMITS: dict[str, tuple[float, float]] = {
    "gain": (1e-3, 10.0),
    "offset": (-255.0, 255.0),
    "gamma": (1e-2, 10.0),
    "saturation": (0.0, 10.0),
    "contrast": (1e-3, 10.0),
    "blur": (0.0, 20.0),
    "haze": (0.0, 0.95),
    "haze_level": (0.0, 255.0),
    "noise": (0.0, 100.0),
}


@dataclass
class StyleFamily:
    """Ranges ``[low, high]`` of a generic photometric style; each value is drawn uniformly.

    Attributes:
        gain: per-band multiplicative gain (drawn for each band independently).
        offset: per-band additive offset, in 8-bit DN (each band independently).
        gamma: ``out = in ** gamma`` on [0, 1] values.
        saturation: 0 = grey, 1 = unchanged.
        contrast: scaling of the deviation from the tile's mean grey level.
        blur: Gaussian blur sigma in pixels (a coarser sensor).
        haze: blend weight towards a haze colour.
        haze_level: the haze colour, per band, in DN.
        noise: Gaussian sensor noise standard deviation, in DN.
    """

    gain: tuple[float, float] = (0.75, 1.3)
    offset: tuple[float, float] = (-15.0, 15.0)
    gamma: tuple[float, float] = (0.7, 1.5)
    saturation: tuple[float, float] = (0.6, 1.3)
    contrast: tuple[float, float] = (0.7, 1.3)
    blur: tuple[float, float] = (0.0, 1.5)
    haze: tuple[float, float] = (0.0, 0.3)
    haze_level: tuple[float, float] = (170.0, 240.0)
    noise: tuple[float, float] = (0.0, 4.0)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | StyleFamily | None, where: str = "style_pairs.family") -> StyleFamily:
        if isinstance(config, StyleFamily):
            config.validate(where)
            return config
        config = dict(config or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise StyleError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        family = cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in config.items()})
        family.validate(where)
        return family

    def validate(self, where: str = "style_pairs.family") -> None:
        for name, (lo_lim, hi_lim) in _LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise StyleError(f"{where}.{name}: expected an interval [low, high], got {value!r}")
            try:
                lo, hi = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                raise StyleError(f"{where}.{name}: interval ends must be numbers, got {value!r}") from None
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise StyleError(f"{where}.{name}: {list(value)} is not a valid interval (need low <= high)")
            if lo < lo_lim or hi > hi_lim:
                raise StyleError(f"{where}.{name}: {list(value)} leaves the allowed range [{lo_lim}, {hi_lim}]")

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [float(v[0]), float(v[1])] for k, v in asdict(self).items()}

    def draw(self, seed: int) -> Style:
        """One concrete style, a pure function of ``seed``."""
        rng = np.random.default_rng(int(seed) & 0xFFFFFFFFFFFF)

        def u(name: str, n: int | None = None) -> Any:
            lo, hi = getattr(self, name)
            return rng.uniform(float(lo), float(hi), size=n)

        return Style(
            gain=tuple(float(v) for v in u("gain", 3)),
            offset=tuple(float(v) for v in u("offset", 3)),
            gamma=float(u("gamma")),
            saturation=float(u("saturation")),
            contrast=float(u("contrast")),
            blur=float(u("blur")),
            haze=float(u("haze")),
            haze_color=tuple(float(v) for v in u("haze_level", 3)),
            noise=float(u("noise")),
            seed=int(seed),
        )


@dataclass(frozen=True)
class Style:
    """One concrete photometric style (see :class:`StyleFamily` for the meaning of each value)."""

    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gamma: float = 1.0
    saturation: float = 1.0
    contrast: float = 1.0
    blur: float = 0.0
    haze: float = 0.0
    haze_color: tuple[float, float, float] = field(default=(200.0, 200.0, 200.0))
    noise: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Style:
        tuples = ("gain", "offset", "haze_color")
        return cls(**{k: tuple(float(x) for x in v) if k in tuples else v for k, v in d.items()})


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 1e-3:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < radius:  # tiny images: clip the kernel to what reflection padding allows
        k = k[radius - pad : radius + pad + 1]
        k = k / k.sum()
        radius = pad
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _noise_seed(style: Style, name: str) -> int:
    digest = hashlib.blake2b(f"{style.seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def apply_style(image: np.ndarray, style: Style, name: str = "") -> np.ndarray:
    """Render a uint8 ``H×W×3`` tile in ``style``; the noise is seeded by the style and ``name``.

    Order: blur (a coarser sensor) → contrast and saturation → gamma → per-band gain and offset
    → haze → noise → round and clip to 0..255.
    """
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise StyleError(f"{name or 'image'}: expected a uint8 H×W×3 image, got {arr.dtype} {arr.shape}")
    x = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)[None].double() / 255.0
    x = _gaussian_blur(x, float(style.blur))
    grey = x.mean(1, keepdim=True)
    x = grey.mean() + (x - grey.mean()) * float(style.contrast)
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * float(style.saturation)
    x = x.clamp(0.0, 1.0) ** float(style.gamma)
    gain = torch.tensor(style.gain, dtype=x.dtype).view(1, 3, 1, 1)
    offset = torch.tensor(style.offset, dtype=x.dtype).view(1, 3, 1, 1) / 255.0
    x = x * gain + offset
    haze = torch.tensor(style.haze_color, dtype=x.dtype).view(1, 3, 1, 1) / 255.0
    x = x * (1.0 - float(style.haze)) + haze * float(style.haze)
    if style.noise > 0:
        g = torch.Generator().manual_seed(_noise_seed(style, name))
        x = x + torch.randn(x.shape, generator=g, dtype=x.dtype) * (float(style.noise) / 255.0)
    out = (x[0].permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return out.numpy()


def style_sets(names: Sequence[str], groups: Sequence[str] | None, size: int, seed: int) -> list[list[str]]:
    """Seeded partition of ``names`` into sets of ``size`` tiles (within a group where groups are given).

    The tiles of one set share one style; each is the other's Ref. A group with fewer tiles than
    ``size`` is merged with the next smallest one, and a remainder of a group joins its last set,
    so every set has at least two tiles when there are two tiles at all.
    """
    if size < 2:
        raise StyleError(f"style_pairs.set_size must be at least 2, got {size}")
    if len(names) < 2:
        raise StyleError(f"style pairs need at least two training tiles, got {len(names)}")
    rng = np.random.default_rng(int(seed) & 0xFFFFFFFF)
    by_group: dict[str, list[str]] = {}
    for i, n in enumerate(names):
        by_group.setdefault(str(groups[i]) if groups is not None else "", []).append(str(n))
    buckets = [sorted(v) for _, v in sorted(by_group.items())]
    buckets.sort(key=len)
    while len(buckets) > 1 and len(buckets[0]) < size:  # too small to make a set: merge
        small = buckets.pop(0)
        buckets[0] = sorted(buckets[0] + small)
        buckets.sort(key=len)
    sets: list[list[str]] = []
    for bucket in buckets:
        order = [bucket[i] for i in rng.permutation(len(bucket))]
        chunk = [order[i : i + size] for i in range(0, len(order), size)]
        if len(chunk) > 1 and len(chunk[-1]) < 2:
            last = chunk.pop()
            chunk[-1] = chunk[-1] + last
        sets += chunk
    return sets
