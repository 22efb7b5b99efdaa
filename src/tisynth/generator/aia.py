"""All-in-Attention (AIA): two extra cross-attentions in the UNet's middle and decoder blocks.

METHOD §2.4–2.5, §2.9. At every *AIA site* (a ``Transformer2DModel`` of the middle block or of a
decoder block with attention) the first transformer block gets, **before** its self-attention,
text cross-attention and feed-forward::

    x <- x + A_ref (LN_ref (x),  R)      # keys/values: the Ref ControlNet feature of this site
    x <- x + A_mask(LN_mask(x),  M)      # keys/values: the mask ControlNet feature of this site

Each ``A`` is a diffusers :class:`~diffusers.models.attention_processor.Attention` (default
processor, i.e. PyTorch SDPA) with query dim C (the site's width), key/value dim C_r (the
feature's channels), no q/k/v bias, output bias; its ``to_out`` projection starts at zero, so an
untrained site is exactly the identity.

Which ControlNet output feeds which site is *derived* from the UNet's modules
(:func:`derive_aia_sites`): the decoder transformer that follows resnet ``j`` of up block ``i``
uses the ControlNet output of the skip connection that resnet concatenates; middle-block
transformers use ``mid_block_res_sample``. Nothing SD1.5-specific is assumed.

Features reach the sites through a side channel (:class:`FeatureStore`), read by a forward
pre-hook on each site's first ``BasicTransformerBlock``. The hook replaces the block's input
``hidden_states`` by the AIA output, which is the same as inserting the two sub-layers before
the block's self-attention. The UNet's own module tree and state dict stay untouched (the AIA
layers live in the generator), so the base UNet saves and loads as a plain diffusers UNet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from tisynth.errors import TisynthError

MID = -1
"""Skip index used for middle-block sites (they read ``mid_block_res_sample``)."""


class AIAError(TisynthError, ValueError):
    """A UNet/ControlNet layout or a feature that does not fit the AIA sites."""


@dataclass(frozen=True)
class AIASite:
    """One AIA site.

    Attributes:
        name: key in the generator's ``aia`` ModuleDict, e.g. ``mid_0`` or ``up_1_2``.
        block: ``mid`` or ``up``; ``up_index`` / ``layer`` locate the ``Transformer2DModel``.
        skip_index: index of the ControlNet output consumed (``down_block_res_samples[i]``), or
            :data:`MID` for ``mid_block_res_sample``.
        dim: query width C (the site's channels).
        kv_dim: channels C_r of the consumed feature.
        heads: attention heads of the new cross-attentions.
    """

    name: str
    block: str
    up_index: int
    layer: int
    skip_index: int
    dim: int
    kv_dim: int
    heads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def skip_channels(unet: nn.Module) -> list[int]:
    """Channels of the UNet's skip connections in ``down_block_res_samples`` order."""
    chans = [int(unet.conv_in.out_channels)]
    for block in unet.down_blocks:
        for resnet in block.resnets:
            chans.append(int(resnet.out_channels))
        if getattr(block, "downsamplers", None):
            chans.append(int(block.downsamplers[0].out_channels))
    return chans


def derive_aia_sites(unet: nn.Module, include_mid: bool = True, heads: int | None = None) -> list[AIASite]:
    """Derive every AIA site of ``unet`` and the ControlNet output that feeds it.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        include_mid: also make sites in the middle block (METHOD §9.2; we train them).
        heads: heads of the new attentions; default: the site's own self-attention heads.
    """
    chans = skip_channels(unet)
    pointer = len(chans)
    sites: list[AIASite] = []
    mid = getattr(unet, "mid_block", None)
    if include_mid and mid is not None and getattr(mid, "attentions", None):
        for k, attn in enumerate(mid.attentions):
            sites.append(_site(f"mid_{k}", "mid", 0, k, MID, attn, chans[-1], heads))
    for i, block in enumerate(unet.up_blocks):
        n = len(block.resnets)
        if n > pointer:
            raise AIAError(f"up block {i} consumes {n} skips but only {pointer} are left; unsupported UNet layout")
        attentions = getattr(block, "attentions", None) or []
        for j, attn in enumerate(attentions):
            index = pointer - 1 - j  # resnet j pops the last remaining skip of this block
            sites.append(_site(f"up_{i}_{j}", "up", i, j, index, attn, chans[index], heads))
        pointer -= n
    if pointer != 0:
        raise AIAError(f"{pointer} skip connection(s) of the UNet are never consumed; unsupported UNet layout")
    return sites


def _site(name: str, block: str, up_index: int, layer: int, skip: int, attn: nn.Module, kv: int, heads: int | None) -> AIASite:
    first = attn.transformer_blocks[0]
    dim = int(first.attn1.to_q.in_features)
    n_heads = int(heads) if heads else int(first.attn1.heads)
    if dim % n_heads:
        raise AIAError(f"AIA site {name}: width {dim} is not divisible by {n_heads} heads")
    return AIASite(name, block, up_index, layer, skip, dim, kv, n_heads)


def site_module(unet: nn.Module, site: AIASite) -> nn.Module:
    """The ``BasicTransformerBlock`` that ``site`` hooks (first block of its transformer)."""
    if site.block == "mid":
        transformer = unet.mid_block.attentions[site.layer]
    else:
        transformer = unet.up_blocks[site.up_index].attentions[site.layer]
    return transformer.transformer_blocks[0]


class AIALayer(nn.Module):
    """The two AIA sub-layers of one site: Ref cross-attention, then mask cross-attention."""

    def __init__(self, dim: int, kv_dim: int, heads: int, zero_init: bool = True):
        super().__init__()
        if dim % heads:
            raise AIAError(f"AIA width {dim} is not divisible by {heads} heads")
        self.ref_norm = nn.LayerNorm(dim)
        self.ref_attn = Attention(query_dim=dim, cross_attention_dim=kv_dim, heads=heads, dim_head=dim // heads, bias=False, out_bias=True)
        self.mask_norm = nn.LayerNorm(dim)
        self.mask_attn = Attention(query_dim=dim, cross_attention_dim=kv_dim, heads=heads, dim_head=dim // heads, bias=False, out_bias=True)
        if zero_init:
            for attn in (self.ref_attn, self.mask_attn):
                nn.init.zeros_(attn.to_out[0].weight)
                nn.init.zeros_(attn.to_out[0].bias)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """``x``: B×N×C tokens; ``ref``/``mask``: B×N×C_r tokens (or None to skip that sub-layer)."""
        if ref is not None:
            x = x + self.ref_attn(self.ref_norm(x), encoder_hidden_states=ref)
        if mask is not None:
            x = x + self.mask_attn(self.mask_norm(x), encoder_hidden_states=mask)
        return x


class FeatureStore:
    """Side channel holding per-site (Ref, mask) tokens for the next UNet call(s).

    Features stay set until replaced or cleared, so that gradient-checkpointed blocks see the
    same features when they are recomputed during the backward pass.
    """

    def __init__(self) -> None:
        self._features: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}

    def set(self, features: Mapping[str, tuple[torch.Tensor | None, torch.Tensor | None]]) -> None:
        self._features = dict(features)

    def clear(self) -> None:
        self._features = {}

    def get(self, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
        return self._features.get(name)

    def __bool__(self) -> bool:
        return bool(self._features)


def feature_tokens(feature: torch.Tensor) -> torch.Tensor:
    """B×C×H×W feature map -> B×(H·W)×C tokens (row-major, the order Transformer2DModel uses)."""
    return feature.flatten(2).transpose(1, 2)


class _SiteHook:
    """Forward pre-hook: replace the block's ``hidden_states`` by the AIA output."""

    def __init__(self, site: AIASite, layer: AIALayer, store: FeatureStore):
        self.site, self.layer, self.store = site, layer, store

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        feats = self.store.get(self.site.name)
        if feats is None:
            return None
        ref, mask = feats
        if args:
            hidden, rest = args[0], args[1:]
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        for what, f in (("Ref", ref), ("mask", mask)):
            if f is not None and (f.shape[0] != hidden.shape[0] or f.shape[1] != hidden.shape[1] or f.shape[2] != self.site.kv_dim):
                raise AIAError(
                    f"AIA site {self.site.name}: {what} feature has shape {tuple(f.shape)}, expected "
                    f"{hidden.shape[0]}×{hidden.shape[1]}×{self.site.kv_dim} (batch × tokens × channels)"
                )
        hidden = self.layer(hidden, ref, mask)
        return (hidden, *rest), kwargs


def attach_aia(unet: nn.Module, sites: list[AIASite], layers: Mapping[str, AIALayer], store: FeatureStore) -> list[Any]:
    """Install the pre-hooks; returns their handles (``handle.remove()`` detaches)."""
    handles = []
    for site in sites:
        block = site_module(unet, site)
        handles.append(block.register_forward_pre_hook(_SiteHook(site, layers[site.name], store), with_kwargs=True))
    return handles
