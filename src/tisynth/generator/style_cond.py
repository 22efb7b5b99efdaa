"""A global style path: the Ref's statistics steer the UNet's normalisation layers.

The paper's Ref path is a ControlNet whose features enter the UNet through all-in-attention.
That path can carry layout and texture, but a zero-initialised ControlNet trained for a few
hundred steps from scratch moves an image's global look very little. The global style path is
the direct route beside it (AdaIN-style conditioning): the Ref latent's per-channel mean and
standard deviation (``2C`` numbers) go through a small MLP to one embedding per image, and after
every GroupNorm of every UNet ResBlock (the sites SPADE uses) a linear head turns it into a
per-channel scale and shift, ``h <- h * (1 + γ) + β``. The heads start at zero, so an untrained
path is the identity, and only stage B trains it. Without a Ref (mode ``base``), nothing is
applied.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tisynth.generator.mask_cond import _key, norm_sites

STYLE_CONDITIONINGS = ("none", "global")


def ref_statistics(ref_latents: torch.Tensor) -> torch.Tensor:
    """``B×C×h×w`` Ref latents -> ``B×2C`` (per-channel mean, then standard deviation)."""
    flat = ref_latents.float().flatten(2)
    return torch.cat([flat.mean(-1), flat.std(-1, unbiased=False)], 1)


class RefStyleConditioning(nn.Module):
    """The embedding MLP and one zero-initialised scale/shift head per normalisation site."""

    def __init__(self, latent_channels: int, sites: list[tuple[str, int]], hidden: int = 128):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(2 * latent_channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.heads = nn.ModuleDict()
        for name, channels in sites:
            head = nn.Linear(hidden, 2 * channels)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            self.heads[_key(name)] = head

    def embedding(self, ref_latents: torch.Tensor) -> torch.Tensor:
        return self.embed(ref_statistics(ref_latents))

    def modulate(self, key: str, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.heads[key](emb.to(h.dtype)).chunk(2, dim=1)
        return h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


def build_style_conditioning(kind: str, unet: nn.Module, latent_channels: int, hidden: int = 128) -> RefStyleConditioning | None:
    if kind not in STYLE_CONDITIONINGS:
        raise ValueError(f"style_conditioning must be one of {STYLE_CONDITIONINGS}, got {kind!r}")
    if kind == "none":
        return None
    return RefStyleConditioning(latent_channels, norm_sites(unet), hidden)


class StyleStore:
    """The current forward pass's style embedding (None: no Ref, the hooks do nothing)."""

    def __init__(self) -> None:
        self.emb: torch.Tensor | None = None

    def set(self, value: torch.Tensor | None) -> None:
        self.emb = value

    def clear(self) -> None:
        self.emb = None


class _Hook:
    def __init__(self, key: str, module: RefStyleConditioning, store: StyleStore):
        self.key, self.module, self.store = key, module, store

    def __call__(self, _mod: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        emb = self.store.emb
        if emb is None:
            return output
        if emb.shape[0] != output.shape[0]:
            raise ValueError(f"style embedding for {emb.shape[0]} images, features of {output.shape[0]}")
        return self.module.modulate(self.key, output, emb)


def attach_style_conditioning(unet: nn.Module, module: RefStyleConditioning, store: StyleStore) -> list[Any]:
    """Forward hooks on every normalisation site (after any mask modulation there); returns the handles."""
    named = dict(unet.named_modules())
    return [named[key.replace("__", ".")].register_forward_hook(_Hook(key, module, store)) for key in module.heads]
