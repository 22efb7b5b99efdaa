"""Training-time geometric augmentation of the Ref image (METHOD §1.5), batched in torch.

The Ref of a training sample is an augmented copy of its own target image. Four operations are
drawn independently per image, each with probability ``p`` (times an optional per-op weight):

1. integer translation with mirror wrap, up to ``integer_translation_max`` × the image size;
2. isotropic scaling by ``2 ** (scale_std · z)``, z ~ N(0, 1);
3. rotation by θ ~ U(−``rotate_max``·π, +``rotate_max``·π);
4. fractional translation by ``translate_frac_std`` × the image size × N(0, I₂).

Operations 2–4 are combined into one affine map about the image centre and executed as an
anti-aliased warp: bilinear ``grid_sample`` with reflection padding on a ``supersample``×
denser output grid, then a [1, 3, 3, 1] binomial low-pass and decimation (for
``supersample=2``; a box filter for other factors). This stands in for EDM's sym6-wavelet
up/down resampler, which METHOD allows.

Unlike the released code, an image that drew no operation is returned **unchanged** (bit for
bit); with ``p = 0`` the output equals the input.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from tisynth.errors import TisynthError


class AugmentError(TisynthError, ValueError):
    """Invalid augmentation parameters or input."""


@dataclass
class RefAugment:
    """Geometric Ref augmentation; call it on a batch ``B×C×H×W`` (any value range).

    Args:
        p: probability of each operation (0.12 in the paper's config).
        integer_translation, scale, rotation, fractional_translation: per-operation
            probability multipliers (1 = on with probability ``p``, 0 = off).
        integer_translation_max: max integer shift as a fraction of the image size (0.125).
        scale_std: log2 standard deviation of the isotropic scale (0.2).
        rotate_max: max rotation as a fraction of π (0.1, i.e. ±18°).
        translate_frac_std: standard deviation of the fractional shift, fraction of the size (0.125).
        supersample: output supersampling factor of the warp (2).
    """

    p: float = 0.12
    integer_translation: float = 1.0
    scale: float = 1.0
    rotation: float = 1.0
    fractional_translation: float = 1.0
    integer_translation_max: float = 0.125
    scale_std: float = 0.2
    rotate_max: float = 0.1
    translate_frac_std: float = 0.125
    supersample: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise AugmentError(f"augmentation probability p must be in [0, 1], got {self.p}")
        for name in ("integer_translation", "scale", "rotation", "fractional_translation"):
            w = getattr(self, name)
            if w < 0 or self.p * w > 1:
                raise AugmentError(f"{name} weight {w} gives probability {self.p * w} outside [0, 1]")
        for name in ("integer_translation_max", "scale_std", "rotate_max", "translate_frac_std"):
            if getattr(self, name) < 0:
                raise AugmentError(f"{name} must be non-negative, got {getattr(self, name)}")
        if int(self.supersample) != self.supersample or self.supersample < 1:
            raise AugmentError(f"supersample must be a positive integer, got {self.supersample}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    # ------------------------------------------------------------------ call
    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``images`` (B×C×H×W float). Random draws come from ``generator`` (CPU) or the global RNG."""
        if images.ndim != 4:
            raise AugmentError(f"images must be B×C×H×W, got shape {tuple(images.shape)}")
        b, _, h, w = images.shape
        if min(h, w) < 2:
            raise AugmentError(f"images must be at least 2×2, got {h}×{w}")
        draws = self.draw(b, w, h, generator)
        out = images
        # 1. integer translation with mirror wrap
        idx = torch.nonzero(draws["int_apply"]).flatten()
        if len(idx):
            out = out.clone()
            out[idx.to(images.device)] = _mirror_shift(images[idx.to(images.device)], draws["int_shift"][idx])
        # 2-4. one affine warp for the images that drew any of them
        warp = draws["scale_apply"] | draws["rot_apply"] | draws["frac_apply"]
        idx = torch.nonzero(warp).flatten()
        if len(idx):
            mats = _inverse_affine(draws, idx, w, h)
            if out is images:
                out = out.clone()
            dev_idx = idx.to(images.device)
            out[dev_idx] = _warp(out[dev_idx], mats.to(images.device), self.supersample)
        return out

    def draw(self, batch: int, width: int, height: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All random parameters for a batch (CPU tensors), drawn in a fixed order."""

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator)

        d: dict[str, torch.Tensor] = {}
        d["int_apply"] = rand(batch) < self.p * self.integer_translation
        u = rand(batch, 2) * 2 - 1
        size = torch.tensor([width, height], dtype=torch.float32)
        d["int_shift"] = torch.round(u * self.integer_translation_max * size).long()
        d["scale_apply"] = rand(batch) < self.p * self.scale
        d["scale"] = torch.exp2(randn(batch) * self.scale_std)
        d["rot_apply"] = rand(batch) < self.p * self.rotation
        d["theta"] = (rand(batch) * 2 - 1) * math.pi * self.rotate_max
        d["frac_apply"] = rand(batch) < self.p * self.fractional_translation
        d["frac"] = randn(batch, 2) * self.translate_frac_std * size
        return d


def _mirror_shift(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift each image by integer (tx, ty) pixels; source index ``W-1 - |W-1 - ((x - t) mod (2W-2))|``."""
    b, c, h, w = images.shape
    dev = images.device
    x = torch.arange(w, device=dev)[None] - shifts[:, 0:1].to(dev)
    y = torch.arange(h, device=dev)[None] - shifts[:, 1:2].to(dev)
    xs = (w - 1) - ((w - 1) - torch.remainder(x, 2 * w - 2)).abs()
    ys = (h - 1) - ((h - 1) - torch.remainder(y, 2 * h - 2)).abs()
    rows = torch.gather(images, 2, ys[:, None, :, None].expand(b, c, h, w))
    return torch.gather(rows, 3, xs[:, None, None, :].expand(b, c, h, w))


def _inverse_affine(d: dict[str, torch.Tensor], idx: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Per-image 2×3 maps from output pixel coordinates (centred) to input coordinates."""
    n = len(idx)
    g = torch.eye(3).repeat(n, 1, 1)
    s = torch.where(d["scale_apply"][idx], d["scale"][idx], torch.ones(n))
    g = g @ torch.diag_embed(torch.stack([1 / s, 1 / s, torch.ones(n)], 1))
    th = torch.where(d["rot_apply"][idx], d["theta"][idx], torch.zeros(n))
    rot = torch.eye(3).repeat(n, 1, 1)
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = th.cos(), -th.sin(), th.sin(), th.cos()
    g = g @ rot
    t = torch.where(d["frac_apply"][idx, None], d["frac"][idx], torch.zeros(n, 2))
    tr = torch.eye(3).repeat(n, 1, 1)
    tr[:, 0, 2], tr[:, 1, 2] = -t[:, 0], -t[:, 1]
    g = g @ tr
    return g[:, :2]


_BINOMIAL4 = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8.0


def _warp(images: torch.Tensor, mats: torch.Tensor, supersample: int) -> torch.Tensor:
    """Anti-aliased affine warp with reflection padding (see the module docstring)."""
    b, c, h, w = images.shape
    s = int(supersample)
    dtype = images.dtype
    x = images.float()
    dev = x.device
    # output sample positions in centred pixel units, on an s× denser grid
    xs = (torch.arange(w * s, device=dev, dtype=torch.float32) + 0.5) / s - w / 2
    ys = (torch.arange(h * s, device=dev, dtype=torch.float32) + 0.5) / s - h / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy, torch.ones_like(gx)], -1).reshape(1, -1, 3)
    src = pts @ mats.transpose(1, 2)  # b × (hs·ws) × 2, centred input pixel coordinates
    grid = torch.stack([src[..., 0] * (2.0 / w), src[..., 1] * (2.0 / h)], -1).reshape(b, h * s, w * s, 2)
    dense = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if s == 1:
        return dense.to(dtype)
    if s == 2:
        k = _BINOMIAL4.to(dev)
        dense = F.pad(dense, (1, 1, 1, 1), mode="reflect")
        kx = k.view(1, 1, 1, 4).repeat(c, 1, 1, 1)
        ky = k.view(1, 1, 4, 1).repeat(c, 1, 1, 1)
        dense = F.conv2d(dense, kx, stride=(1, 2), groups=c)
        out = F.conv2d(dense, ky, stride=(2, 1), groups=c)
    else:
        out = F.avg_pool2d(dense, s)
    return out.to(dtype)
