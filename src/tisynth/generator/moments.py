"""Ref-set latent moments: the Refs set the look of a sample through its latent statistics.

The paper's Ref path (a Ref ControlNet whose features enter the UNet through all-in-attention)
has to *learn* to carry style, and trained from scratch on a few hundred CPU steps it does not
(docs/results.md §4d). This is the direct route beside it, in the spirit of the "initial latent
AdaIN" of training-free diffusion style transfer (Chung et al., CVPR 2024): the look of a
domain lives largely in the per-channel mean and standard deviation of its autoencoder latents,
so the sampled latent ``z`` is moved, channel by channel, from the generator's *home* moments
(those of the labelled source tiles its masks come from) to the moments of the *Ref set*:

    z' = z + s · [(μ_ref − μ_home) + (σ_ref / σ_home − 1) · (z − z̄)]

with strength ``s`` (0 = the paper's sampler, 1 = the whole shift) and ``z̄`` the image's own
per-channel mean. Each image keeps its own content (a mostly-water mask stays darker than a
mostly-built one): its means move by the domain's offset and its contrast scales by the
domain's spread ratio. The contrast is scaled around the image's own mean, not around
``μ_home``: a generator's samples need not sit at the home mean, and scaling around it would
also move their means by ``(σ_ref/σ_home − 1)(z̄ − μ_home)``. (On the sensor-shift base the two
centrings gave the same colour transfer, 72.5 % and 73.4 %: its samples sit within 0.07 of the
home mean.)

Moments of one tile mix its style with its content (a water Ref is dark because it is water),
so by default the Ref moments are pooled over the **set** of Refs the run draws from one domain
(``pool: set``): content averages out and what is left is the domain's look. ``pool: item``
takes each item's own Ref (kept for comparison: content then leaks into the look); its home is
then the average of the home tiles' *own* moments, so that one tile's spread is compared with
one tile's spread.

Only mode ``tisynth`` samples with Refs, so only it takes Ref moments (the mask-only control
stays without them).

Moments are computed over all pixels of a set of latents; the transform is applied once, to the
denoised latent before decoding, so the denoising trajectory is the generator's own and nothing
is trained. The settings are the block ``sample.ref_moments`` (:class:`MomentSettings`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from tisynth.errors import TisynthError
from tisynth.params import dataclass_from_mapping

POOLS = ("set", "item")


class MomentError(TisynthError, ValueError):
    """Ref-moment settings or inputs that cannot be used."""


@dataclass(frozen=True)
class MomentSettings:
    """The block ``sample.ref_moments``.

    Attributes:
        strength: how far the samples move from the home moments to the Ref moments (0 = off,
            the paper's sampler; 1 = the whole shift; above 1 extrapolates).
        pool: ``set`` (the moments of all Refs of one domain in the run, content averaged out) or
            ``item`` (each item's own Ref).
        tiles: at most this many tiles (drawn with ``seed``, by name) enter each set's moments.
        seed: the draw of those tiles.
        min_std: a floor on the home standard deviation (latent units), so a flat channel does
            not blow up the spread ratio.
    """

    strength: float = 0.0
    pool: str = "set"
    tiles: int = 256
    seed: int = 0
    min_std: float = 1e-3

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | MomentSettings | None) -> MomentSettings:
        if isinstance(params, MomentSettings):
            return params
        if params is not None and not isinstance(params, Mapping):
            raise MomentError(f"sample.ref_moments must be a mapping (strength, pool, tiles, seed), got {params!r}")
        cfg = dataclass_from_mapping(cls, dict(params or {}), MomentError, "unknown sample.ref_moments key(s)")
        if isinstance(cfg.strength, bool) or not isinstance(cfg.strength, (int, float)) or not math.isfinite(cfg.strength) \
                or cfg.strength < 0:
            raise MomentError(f"sample.ref_moments.strength must be a finite number >= 0, got {cfg.strength!r}")
        if cfg.pool not in POOLS:
            raise MomentError(f"sample.ref_moments.pool must be one of {POOLS}, got {cfg.pool!r}")
        if isinstance(cfg.tiles, bool) or not isinstance(cfg.tiles, int) or cfg.tiles < 2:
            raise MomentError(f"sample.ref_moments.tiles must be an integer >= 2, got {cfg.tiles!r}")
        if isinstance(cfg.min_std, bool) or not isinstance(cfg.min_std, (int, float)) or not cfg.min_std > 0:
            raise MomentError(f"sample.ref_moments.min_std must be > 0, got {cfg.min_std!r}")
        if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
            raise MomentError(f"sample.ref_moments.seed must be a non-negative integer, got {cfg.seed!r}")
        return cfg

    @property
    def enabled(self) -> bool:
        return self.strength > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def latent_moments(latents: torch.Tensor) -> torch.Tensor:
    """``N×C×h×w`` latents -> a ``2C`` vector: per-channel mean, then standard deviation, over all
    pixels of all images of the set."""
    if latents.ndim != 4 or latents.shape[0] < 1:
        raise MomentError(f"latent moments need N×C×h×w latents of at least one image, got shape {tuple(latents.shape)}")
    flat = latents.detach().float().transpose(0, 1).flatten(1)
    return torch.cat([flat.mean(1), flat.std(1, unbiased=False)])


def item_moments(latents: torch.Tensor) -> torch.Tensor:
    """``N×C×h×w`` -> ``N×2C``: each image's own moments."""
    return torch.stack([latent_moments(latents[i : i + 1]) for i in range(latents.shape[0])])


def moment_transfer(latents: torch.Tensor, home: torch.Tensor, target: torch.Tensor, strength: float = 1.0,
                    min_std: float = 1e-3) -> torch.Tensor:
    """Move ``latents`` (``B×C×h×w``) from the ``home`` moments to the ``target`` moments.

    ``home`` is a ``2C`` vector; ``target`` is ``2C`` (one set for all) or ``B×2C`` (per image).
    Each image's channel means move by ``μ_target − μ_home`` and its spread around its own mean
    scales by ``σ_target / σ_home``; at ``strength`` 1 a set of flat-mean images whose moments are
    ``home`` gets exactly the ``target`` moments.
    """
    b, c = latents.shape[:2]
    home = home.to(latents.device, torch.float32).reshape(-1)
    if home.numel() != 2 * c:
        raise MomentError(f"home moments have {home.numel()} numbers, the latents {c} channels (need {2 * c})")
    target = target.to(latents.device, torch.float32)
    if target.ndim == 1:
        target = target[None].expand(b, -1)
    if tuple(target.shape) != (b, 2 * c):
        raise MomentError(f"Ref moments of shape {tuple(target.shape)} for {b} latents of {c} channels (need {b}×{2 * c})")
    mu_h, sd_h = home[:c].view(1, c, 1, 1), home[c:].clamp_min(min_std).view(1, c, 1, 1)
    mu_t, sd_t = target[:, :c].view(b, c, 1, 1), target[:, c:].view(b, c, 1, 1)
    z = latents.float()
    own = z.mean((2, 3), keepdim=True)
    moved = z + (mu_t - mu_h) + (sd_t / sd_h - 1) * (z - own)
    return (z + float(strength) * (moved - z)).to(latents.dtype)


@torch.no_grad()
def encode_moments(model: Any, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 16) -> torch.Tensor:
    """The ``2C`` latent moments of a set of uint8 ``H×W×3`` images, through ``model``'s autoencoder."""
    return latent_moments(_encode(model, images, batch_size))


def _encode(model: Any, images: np.ndarray | Sequence[np.ndarray], batch_size: int) -> torch.Tensor:
    """uint8 ``N×H×W×3`` images -> their latents ``N×C×h×w`` on the CPU, ``batch_size`` at a time."""
    from tisynth.generator.data import uint8_to_images

    arr = np.asarray(images)
    if arr.ndim != 4 or len(arr) < 1:
        raise MomentError(f"moments need a set of H×W×3 images, got an array of shape {arr.shape}")
    return torch.cat([model.encode_images(uint8_to_images(arr[i : i + batch_size])).float().cpu()
                      for i in range(0, len(arr), batch_size)])


@torch.no_grad()
def encode_home_moments(model: Any, images: np.ndarray, pool: str, batch_size: int = 16) -> torch.Tensor:
    """Home moments for a pool: over the whole set (``set``) or the mean of each image's own (``item``)."""
    if pool == "item":
        return encode_item_moments(model, images, batch_size).mean(0)
    return encode_moments(model, images, batch_size)


@torch.no_grad()
def encode_item_moments(model: Any, images: np.ndarray, batch_size: int = 16) -> torch.Tensor:
    """Each image's own ``2C`` moments (``N×2C``)."""
    return item_moments(_encode(model, images, batch_size))


def draw_names(names: Sequence[str], k: int, seed: int) -> list[str]:
    """At most ``k`` of ``names`` (distinct, sorted first), drawn with ``seed``: the set a moment vector is taken over."""
    unique = sorted({str(n) for n in names})
    if len(unique) <= k:
        return unique
    rng = np.random.default_rng(seed)
    return sorted(unique[int(i)] for i in rng.choice(len(unique), size=k, replace=False))


@dataclass
class MomentTransfer:
    """What :func:`tisynth.generator.sample.sample_images` applies to its denoised latents: the
    ``home`` moments (``2C``), the Ref moments (``2C`` for all items or ``N×2C`` per item), the strength."""

    home: torch.Tensor
    targets: torch.Tensor
    strength: float = 1.0
    min_std: float = 1e-3

    def for_items(self, sl: slice, n: int) -> torch.Tensor:
        if self.targets.ndim == 1:
            return self.targets
        if self.targets.shape[0] != n:
            raise MomentError(f"Ref moments for {self.targets.shape[0]} items, {n} items sampled")
        return self.targets[sl]

    def apply(self, latents: torch.Tensor, sl: slice, n: int) -> torch.Tensor:
        return moment_transfer(latents, self.home, self.for_items(sl, n), self.strength, self.min_std)
