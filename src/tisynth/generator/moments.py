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

``transform: covariance`` replaces the per-channel spreads by the channels' full covariance and
the spread ratio by the linear optimal-transport map between two Gaussians (the "MK" linear
colour transfer of Pitié & Kokaram, 2007, in latent space):

    A = Σ_h^-½ (Σ_h^½ Σ_ref Σ_h^½)^½ Σ_h^-½,    z' = z + s · [(μ_ref − μ_home) + (A − I) · (z − z̄)]

Latent channels are correlated (they are not colour bands: a band's contrast is spread over
several of them), so a change in one band's contrast moves their joint covariance, of which a
per-channel ratio sees only the diagonal.
With diagonal covariances the map is the per-channel ratio, so ``channel`` is its special case.

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
TRANSFORMS = ("channel", "covariance")


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
            not blow up the spread ratio (with ``covariance``: on the square roots of the home
            covariance's eigenvalues).
        transform: ``channel`` (per-channel mean and spread) or ``covariance`` (means and the
            full channel covariance, moved by the Gaussian optimal-transport map).
    """

    strength: float = 0.0
    pool: str = "set"
    tiles: int = 256
    seed: int = 0
    min_std: float = 1e-3
    transform: str = "channel"

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
        if cfg.transform not in TRANSFORMS:
            raise MomentError(f"sample.ref_moments.transform must be one of {TRANSFORMS}, got {cfg.transform!r}")
        return cfg

    @property
    def enabled(self) -> bool:
        return self.strength > 0

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded in a run's fingerprint (``transform`` only when not the default
        ``channel``, so runs made before the key existed keep their fingerprints)."""
        out = asdict(self)
        if out["transform"] == "channel":
            del out["transform"]
        return out


def _check_transform(transform: str) -> None:
    if transform not in TRANSFORMS:
        raise MomentError(f"moment transform must be one of {TRANSFORMS}, got {transform!r}")


def moment_size(channels: int, transform: str = "channel") -> int:
    """How many numbers a moment vector of ``channels`` latent channels has: ``2C`` (means, standard
    deviations) or ``C + C²`` (means, the covariance matrix row by row)."""
    _check_transform(transform)
    return 2 * channels if transform == "channel" else channels + channels * channels


def latent_moments(latents: torch.Tensor, transform: str = "channel") -> torch.Tensor:
    """``N×C×h×w`` latents -> one moment vector over all pixels of all images of the set: per-channel
    means, then (``channel``) the per-channel standard deviations or (``covariance``) the ``C×C``
    channel covariance, flattened."""
    _check_transform(transform)
    if latents.ndim != 4 or latents.shape[0] < 1:
        raise MomentError(f"latent moments need N×C×h×w latents of at least one image, got shape {tuple(latents.shape)}")
    flat = latents.detach().float().transpose(0, 1).flatten(1)
    mean = flat.mean(1)
    if transform == "channel":
        return torch.cat([mean, flat.std(1, unbiased=False)])
    centred = (flat - mean[:, None]).double()
    cov = (centred @ centred.T) / flat.shape[1]
    return torch.cat([mean, cov.float().flatten()])


def item_moments(latents: torch.Tensor, transform: str = "channel") -> torch.Tensor:
    """``N×C×h×w`` -> ``N×2C`` (or ``N×(C+C²)``): each image's own moments."""
    return torch.stack([latent_moments(latents[i : i + 1], transform) for i in range(latents.shape[0])])


def _sym_power(matrix: torch.Tensor, power: float, floor: float = 0.0) -> torch.Tensor:
    """``matrix^power`` of a symmetric positive semi-definite matrix, eigenvalues floored at ``floor``."""
    vals, vecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * vals.clamp_min(floor).pow(power)) @ vecs.T


def gaussian_transport(home_cov: torch.Tensor, target_cov: torch.Tensor, min_std: float = 1e-3) -> torch.Tensor:
    """The linear map ``A`` that carries a centred Gaussian of covariance ``home_cov`` onto one of
    ``target_cov`` with the least mean squared displacement (``A Σ_h A = Σ_t``, ``A`` symmetric);
    the home eigenvalues are floored at ``min_std²``."""
    h = home_cov.double()
    t = target_cov.double()
    h_half = _sym_power(h, 0.5, min_std**2)
    h_inv_half = _sym_power(h, -0.5, min_std**2)
    middle = _sym_power(h_half @ t @ h_half, 0.5)
    return (h_inv_half @ middle @ h_inv_half).float()


def moment_transfer(latents: torch.Tensor, home: torch.Tensor, target: torch.Tensor, strength: float = 1.0,
                    min_std: float = 1e-3, transform: str = "channel") -> torch.Tensor:
    """Move ``latents`` (``B×C×h×w``) from the ``home`` moments to the ``target`` moments.

    ``home`` is one moment vector (:func:`latent_moments` of ``transform``); ``target`` is one
    (for all images) or ``B`` of them (per image). Each image's channel means move by
    ``μ_target − μ_home`` and its spread around its own mean is scaled by ``σ_target / σ_home``
    (``channel``) or mapped by :func:`gaussian_transport` (``covariance``); at ``strength`` 1 a
    set of flat-mean images whose moments are ``home`` gets exactly the ``target`` moments.
    """
    b, c = latents.shape[:2]
    size = moment_size(c, transform)
    home = home.to(latents.device, torch.float32).reshape(-1)
    if home.numel() != size:
        raise MomentError(f"home moments have {home.numel()} numbers, the latents {c} channels "
                          f"(need {size} for transform {transform!r})")
    target = target.to(latents.device, torch.float32)
    if target.ndim == 1:
        target = target[None].expand(b, -1)
    if tuple(target.shape) != (b, size):
        raise MomentError(f"Ref moments of shape {tuple(target.shape)} for {b} latents of {c} channels "
                          f"(need {b}×{size} for transform {transform!r})")
    z = latents.float()
    own = z.mean((2, 3), keepdim=True)
    shift = (target[:, :c] - home[:c]).view(b, c, 1, 1)
    if transform == "channel":
        sd_h = home[c:].clamp_min(min_std).view(1, c, 1, 1)
        sd_t = target[:, c:].view(b, c, 1, 1)
        moved = z + shift + (sd_t / sd_h - 1) * (z - own)
    else:
        home_cov = home[c:].view(c, c)
        maps: dict[bytes, torch.Tensor] = {}  # a set's rows share one map
        spread = torch.empty_like(z)
        for i in range(b):
            key = target[i].cpu().numpy().tobytes()
            if key not in maps:
                maps[key] = gaussian_transport(home_cov.cpu(), target[i, c:].view(c, c).cpu(), min_std).to(z.device)
            centred = z[i] - own[i]
            spread[i] = torch.einsum("ij,jhw->ihw", maps[key], centred)
        moved = own + shift + spread
    return (z + float(strength) * (moved - z)).to(latents.dtype)


@torch.no_grad()
def encode_moments(model: Any, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 16,
                   transform: str = "channel") -> torch.Tensor:
    """The latent moments of a set of uint8 ``H×W×3`` images, through ``model``'s autoencoder."""
    return latent_moments(_encode(model, images, batch_size), transform)


def _encode(model: Any, images: np.ndarray | Sequence[np.ndarray], batch_size: int) -> torch.Tensor:
    """uint8 ``N×H×W×3`` images -> their latents ``N×C×h×w`` on the CPU, ``batch_size`` at a time."""
    from tisynth.generator.data import uint8_to_images

    arr = np.asarray(images)
    if arr.ndim != 4 or len(arr) < 1:
        raise MomentError(f"moments need a set of H×W×3 images, got an array of shape {arr.shape}")
    return torch.cat([model.encode_images(uint8_to_images(arr[i : i + batch_size])).float().cpu()
                      for i in range(0, len(arr), batch_size)])


@torch.no_grad()
def encode_home_moments(model: Any, images: np.ndarray, pool: str, batch_size: int = 16,
                        transform: str = "channel") -> torch.Tensor:
    """Home moments for a pool: over the whole set (``set``) or the mean of each image's own (``item``)."""
    if pool == "item":
        return encode_item_moments(model, images, batch_size, transform).mean(0)
    return encode_moments(model, images, batch_size, transform)


@torch.no_grad()
def encode_item_moments(model: Any, images: np.ndarray, batch_size: int = 16, transform: str = "channel") -> torch.Tensor:
    """Each image's own moments (``N×2C``, or ``N×(C+C²)`` for ``covariance``)."""
    return item_moments(_encode(model, images, batch_size), transform)


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
    ``home`` moments (one vector), the Ref moments (one vector for all items or one per item), the
    strength and the transform (:func:`moment_transfer`)."""

    home: torch.Tensor
    targets: torch.Tensor
    strength: float = 1.0
    min_std: float = 1e-3
    transform: str = "channel"

    def for_items(self, sl: slice, n: int) -> torch.Tensor:
        if self.targets.ndim == 1:
            return self.targets
        if self.targets.shape[0] != n:
            raise MomentError(f"Ref moments for {self.targets.shape[0]} items, {n} items sampled")
        return self.targets[sl]

    def apply(self, latents: torch.Tensor, sl: slice, n: int) -> torch.Tensor:
        return moment_transfer(latents, self.home, self.for_items(sl, n), self.strength, self.min_std, self.transform)
