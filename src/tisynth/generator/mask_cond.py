"""Mask-first conditioning of the base UNet: the mask steers the denoiser from its first step.

The paper steers a *pretrained* Stable Diffusion with a mask ControlNet. A UNet trained from
scratch has no prior to steer; there the mask must condition the denoiser itself from step 0
(semantic diffusion models, Wang et al. 2022; LDM's semantic synthesis). Two ways are built:

* ``spade``: spatially-adaptive normalisation. Every GroupNorm of every UNet ResBlock (encoder,
  middle and decoder) is followed by a per-pixel modulation ``h <- h * (1 + γ(m)) + β(m)``, where
  ``m`` is the mask map area-resized to ``h``'s resolution and ``γ, β`` come from a small conv
  net (3×3 conv -> SiLU -> two 3×3 convs). SDM's way.
* ``concat``: the mask map, area-resized to the latent resolution, concatenated to the UNet's
  input. Implemented as a 3×3 conv of the mask map added to ``conv_in``'s output, which is the
  same function as widening ``conv_in`` by the mask channels (the UNet's own ``conv_in``
  keeps its shape, so the UNet still saves as a plain diffusers UNet).

The *mask map* has ``K + 1`` channels: the one-hot classes and an explicit ``ignore`` channel
(1 where the mask says ignore). A dropped condition (classifier-free guidance training, and
the unconditional branch at sampling) is the all-zero map, which no real mask produces.

The modulation modules live in the generator (``TISynthGenerator.mask_cond``), not in the
UNet's module tree; they act through forward hooks, like the AIA layers, and read the current
mask map from a :class:`MaskStore` that :meth:`TISynthGenerator.predict_noise` fills.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from tisynth.classes import IGNORE_INDEX
from tisynth.errors import TisynthError

MASK_CONDITIONINGS = ("controlnet", "spade", "concat")
"""``controlnet``: the paper's (mask ControlNet, stage A); ``spade``/``concat``: mask-first base."""


class MaskConditioningError(TisynthError, ValueError):
    """A mask map or a mask-conditioning setting that cannot be used."""


def mask_map(masks: torch.Tensor, num_classes: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Index masks ``B×H×W`` -> mask maps ``B×(K+1)×H×W`` (one-hot + ignore channel).

    ``keep``: per-item booleans; items with ``False`` get the all-zero map (the dropped
    condition).
    """
    m = torch.as_tensor(masks)
    if m.ndim != 3 or m.dtype.is_floating_point:
        raise MaskConditioningError(f"masks must be integer B×H×W index masks, got {m.dtype} {tuple(m.shape)}")
    m = m.long()
    bad = (m < 0) | ((m >= num_classes) & (m != IGNORE_INDEX))
    if bool(bad.any()):
        raise MaskConditioningError(
            f"mask value(s) {torch.unique(m[bad])[:10].tolist()} are neither a class 0..{num_classes - 1} nor ignore ({IGNORE_INDEX})"
        )
    index = torch.where(m == IGNORE_INDEX, torch.full_like(m, num_classes), m)
    out = F.one_hot(index, num_classes + 1).permute(0, 3, 1, 2).float()
    if keep is not None:
        out = out * torch.as_tensor(keep, device=out.device).view(-1, 1, 1, 1).float()
    return out


class MaskStore:
    """The mask map of the current forward pass, read by the hooks (cleared after each call)."""

    def __init__(self) -> None:
        self.map: torch.Tensor | None = None

    def set(self, value: torch.Tensor | None) -> None:
        self.map = value

    def clear(self) -> None:
        self.map = None

    def get(self, where: str) -> torch.Tensor:
        if self.map is None:
            raise MaskConditioningError(
                f"{where}: this generator's UNet is mask-conditioned but no mask was given; pass the masks (mode 'base' too)"
            )
        return self.map


def _resize(seg: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(seg.shape[-2:]) == tuple(size):
        return seg
    if seg.shape[-2] % size[0] == 0 and seg.shape[-1] % size[1] == 0:
        return F.adaptive_avg_pool2d(seg, size)  # area: class fractions per cell
    return F.interpolate(seg, size=size, mode="area" if seg.shape[-2] >= size[0] else "nearest")


class SpadeModulation(nn.Module):
    """``h * (1 + γ(m)) + β(m)`` with ``γ, β`` from a small conv net over the resized mask map."""

    def __init__(self, mask_channels: int, channels: int, hidden: int = 32):
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(mask_channels, hidden, 3, padding=1), nn.SiLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, h: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        a = self.shared(_resize(seg.to(h.dtype), tuple(h.shape[-2:])))
        return h * (1 + self.gamma(a)) + self.beta(a)


class InputMaskConv(nn.Module):
    """The mask channels' part of a widened ``conv_in``: a 3×3 conv of the latent-size mask map."""

    def __init__(self, mask_channels: int, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(mask_channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        return h + self.conv(_resize(seg.to(h.dtype), tuple(h.shape[-2:])))


def _key(name: str) -> str:
    return name.replace(".", "__")


def norm_sites(unet: nn.Module) -> list[tuple[str, int]]:
    """(module name, channels) of every GroupNorm inside a UNet ResBlock (``norm1``, ``norm2``)."""
    sites = []
    for name, module in unet.named_modules():
        if name.rsplit(".", 1)[-1] in ("norm1", "norm2") and ".resnets." in name and isinstance(module, nn.GroupNorm):
            sites.append((name, int(module.num_channels)))
    return sites


def build_mask_conditioning(kind: str, unet: nn.Module, num_classes: int, hidden: int = 32) -> nn.ModuleDict:
    """The modulation modules for ``kind`` (an empty dict for ``controlnet``)."""
    if kind not in MASK_CONDITIONINGS:
        raise MaskConditioningError(f"mask_conditioning must be one of {MASK_CONDITIONINGS}, got {kind!r}")
    c = num_classes + 1
    if kind == "spade":
        return nn.ModuleDict({_key(n): SpadeModulation(c, ch, hidden) for n, ch in norm_sites(unet)})
    if kind == "concat":
        return nn.ModuleDict({_key("conv_in"): InputMaskConv(c, int(unet.conv_in.out_channels))})
    return nn.ModuleDict()


class _Hook:
    def __init__(self, name: str, module: nn.Module, store: MaskStore):
        self.name, self.module, self.store = name, module, store

    def __call__(self, _mod: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return self.module(output, self.store.get(self.name))


def attach_mask_conditioning(unet: nn.Module, modules: nn.ModuleDict, store: MaskStore) -> list[Any]:
    """Install forward hooks that apply ``modules`` to the UNet's outputs; returns the handles."""
    named = dict(unet.named_modules())
    handles = []
    for key, module in modules.items():
        name = key.replace("__", ".")
        if name not in named:
            raise MaskConditioningError(f"mask conditioning site {name!r} does not exist in this UNet")
        handles.append(named[name].register_forward_hook(_Hook(name, module, store)))
    return handles
