"""The TISynth generator: frozen base + mask ControlNet + Ref ControlNet + AIA layers.

:class:`TISynthGenerator` holds

* the frozen base: ``UNet2DConditionModel``, a :class:`~tisynth.generator.autoencoders.LatentAutoencoder`,
  a CLIP text encoder and its tokenizer, and the training noise-scheduler config;
* the **mask ControlNet** (diffusers ``ControlNetModel``): hint = the control image
  (:func:`~tisynth.generator.control.encode_control`), hint encoder downsampling = the
  autoencoder's factor;
* the **Ref ControlNet**: a second ``ControlNetModel`` whose hint is the Ref image's *latent*
  (``conditioning_channels`` = latent channels, stride-1 hint encoder; METHOD §2.3);
* the **AIA layers** (:mod:`tisynth.generator.aia`) at the UNet's middle and decoder
  transformers.

Three ways to predict noise (:meth:`TISynthGenerator.predict_noise`, ``mode=``):

* ``base``: the UNet alone (text only);
* ``controlnet``: stage A, a standard ControlNet: all mask ControlNet outputs are *added* to the
  UNet's skips and middle block;
* ``tisynth``: stage B and inference: the mask and Ref ControlNet features enter **only**
  through the AIA cross-attentions, nothing is added residually (METHOD §2.4). Only the
  ControlNet outputs that some AIA site consumes are computed; blocks after the deepest
  consumed output (and the middle block, when no middle site exists) are not run.
  ``reference_path=True`` instead runs the ControlNets' stock ``forward`` (all outputs), as the
  authors' code does, for benchmarking and cross-checking.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from torch import nn
from transformers import AutoTokenizer, CLIPTextModel

from tisynth.classes import ClassRegistry
from tisynth.errors import TisynthError
from tisynth.generator.aia import (
    MID,
    AIALayer,
    AIASite,
    FeatureStore,
    attach_aia,
    derive_aia_sites,
    feature_tokens,
    skip_channels,
)
from tisynth.generator.autoencoders import LatentAutoencoder, build_autoencoder, load_autoencoder
from tisynth.generator.config import GeneratorConfigError, hint_channels_for_factor, resolve_generator_config
from tisynth.generator.control import control_channels, encode_control
from tisynth.generator.mask_cond import MaskStore, attach_mask_conditioning, build_mask_conditioning
from tisynth.generator.style_cond import StyleStore, attach_style_conditioning, build_style_conditioning
from tisynth.generator.text import build_text_encoder, build_word_tokenizer, encode_prompts, prompt_vocabulary
from tisynth.weights import read_safetensors

FORMAT_VERSION = 1
CONFIG_FILE = "tisynth_generator.json"
MODES = ("base", "controlnet", "tisynth")
STAGES = ("base", "A", "B")


class GeneratorError(TisynthError, ValueError):
    """A generator that cannot be built, loaded or called as asked."""


# ---------------------------------------------------------------------- ControlNet helpers
def set_hint_stride(controlnet: ControlNetModel, stride: int) -> None:
    """Set the stride of the hint encoder's downsampling convs (1 for the Ref ControlNet)."""
    for i, conv in enumerate(controlnet.controlnet_cond_embedding.blocks):
        if i % 2 == 1:
            conv.stride = (stride, stride)


def init_output_convs_identity(controlnet: ControlNetModel) -> None:
    """Initialise a ControlNet's 1×1 output ("zero") convs as identities.

    The Ref ControlNet's outputs reach the UNet only as keys/values of AIA attentions whose
    output projections start at zero. If its output convs also started at zero, both factors of
    every Ref path would be zero, their gradients would vanish and the Ref branch could never
    start learning (a saddle point). Identity convs hand AIA the encoder's activations instead;
    the model output is still unchanged at initialisation because AIA's ``to_out`` is zero.
    """
    with torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            c = conv.weight.shape[0]
            conv.weight.copy_(torch.eye(c, dtype=conv.weight.dtype).view(c, c, 1, 1))
            conv.bias.zero_()


_ENCODER_PARTS = ("conv_in", "time_proj", "time_embedding", "class_embedding", "add_embedding", "down_blocks", "mid_block")


def copy_unet_encoder(controlnet: ControlNetModel, unet: UNet2DConditionModel, only: Collection[str] | None = None) -> None:
    """Load the UNet's encoder into a ControlNet: what ``ControlNetModel.from_unet`` copies.

    Input conv, time embedding (and class/added embeddings when present), down blocks and
    middle block; the hint encoder and the output convs keep their weights. ``only``: copy just
    these ControlNet tensors (names relative to the ControlNet), e.g. the ones a stage trains.
    """
    with torch.no_grad():
        for part in _ENCODER_PARTS:
            mine, theirs = getattr(controlnet, part, None), getattr(unet, part, None)
            if mine is None or theirs is None:
                continue
            source = theirs.state_dict()
            for key, tensor in mine.state_dict(keep_vars=True).items():
                if only is None or f"{part}.{key}" in only:
                    tensor.copy_(source[key])


def hint_factor(controlnet: ControlNetModel) -> int:
    """Spatial downsampling of a ControlNet's hint encoder."""
    f = 1
    for conv in controlnet.controlnet_cond_embedding.blocks:
        f *= int(conv.stride[0])
    return f


def _timesteps(timestep: torch.Tensor | int | float, sample: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(timestep, device=sample.device)
    if t.ndim == 0:
        t = t[None]
    return t.expand(sample.shape[0])


def _layer_outputs(cn: ControlNetModel) -> list[tuple[str, int]]:
    """(module prefix, index of the output it produces) for every encoder layer, in order."""
    out: list[tuple[str, int]] = [("conv_in", 0)]
    idx = 0
    for b, block in enumerate(cn.down_blocks):
        attentions = getattr(block, "attentions", None)
        for k in range(len(block.resnets)):
            idx += 1
            out.append((f"down_blocks.{b}.resnets.{k}", idx))
            if attentions:
                out.append((f"down_blocks.{b}.attentions.{k}", idx))
        if getattr(block, "downsamplers", None):
            idx += 1
            out.append((f"down_blocks.{b}.downsamplers", idx))
    return out


def controlnet_used_prefixes(cn: ControlNetModel, needed: Sequence[int], need_mid: bool) -> list[str]:
    """Module prefixes of ``cn`` that take part in computing outputs ``needed`` (+ the middle)."""
    n_out = len(cn.controlnet_down_blocks)
    last = n_out - 1 if need_mid else (max(needed) if needed else -1)
    prefixes = ["time_embedding", "controlnet_cond_embedding"] if last >= 0 or need_mid else []
    prefixes += [p for p, i in _layer_outputs(cn) if i <= last]
    prefixes += [f"controlnet_down_blocks.{i}" for i in sorted(needed)]
    if need_mid:
        prefixes += ["mid_block", "controlnet_mid_block"]
    return prefixes


def run_controlnet(
    cn: ControlNetModel,
    sample: torch.Tensor,
    timestep: torch.Tensor | int | float,
    encoder_hidden_states: torch.Tensor,
    cond: torch.Tensor,
    needed: Sequence[int],
    need_mid: bool,
    scale: float = 1.0,
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Run ``cn`` only as far as the ``needed`` outputs (and the middle block if ``need_mid``).

    Returns ``({index: down_block_res_sample[index]}, mid_block_res_sample or None)`` with the
    same values as ``cn.forward`` would give for those outputs; zero convs of other outputs and
    blocks past the deepest needed output are skipped.
    """
    cfg = cn.config
    if cfg.class_embed_type is not None or cfg.addition_embed_type is not None or cfg.global_pool_conditions:
        down, mid = cn(sample, timestep, encoder_hidden_states, cond, conditioning_scale=scale, return_dict=False)
        return {i: down[i] for i in needed}, (mid if need_mid else None)
    if cfg.controlnet_conditioning_channel_order == "bgr":
        cond = torch.flip(cond, dims=[1])
    needed_set = set(int(i) for i in needed)
    n_out = len(cn.controlnet_down_blocks)
    if needed_set and (min(needed_set) < 0 or max(needed_set) >= n_out):
        raise GeneratorError(f"ControlNet output index out of range 0..{n_out - 1}: {sorted(needed_set)}")
    last = n_out - 1 if need_mid else (max(needed_set) if needed_set else -1)
    outputs: dict[int, torch.Tensor] = {}
    if last < 0:
        return outputs, None

    emb = cn.time_embedding(cn.time_proj(_timesteps(timestep, sample)).to(dtype=sample.dtype))
    h = cn.conv_in(sample) + cn.controlnet_cond_embedding(cond)

    def record(i: int, x: torch.Tensor) -> None:
        if i in needed_set:
            outputs[i] = cn.controlnet_down_blocks[i](x) * scale

    record(0, h)
    idx = 0
    for block in cn.down_blocks:
        if idx >= last:
            break
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        ckpt = torch.is_grad_enabled() and getattr(block, "gradient_checkpointing", False)
        for resnet, attn in zip(block.resnets, attentions):
            if idx >= last:
                break
            h = block._gradient_checkpointing_func(resnet, h, emb) if ckpt else resnet(h, emb)
            if attn is not None:
                h = attn(h, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
            idx += 1
            record(idx, h)
        if idx < last and getattr(block, "downsamplers", None):
            for ds in block.downsamplers:
                h = ds(h)
            idx += 1
            record(idx, h)
    mid = None
    if need_mid:
        if getattr(cn.mid_block, "has_cross_attention", False):
            h = cn.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
        else:
            h = cn.mid_block(h, emb)
        mid = cn.controlnet_mid_block(h) * scale
    return outputs, mid


# ---------------------------------------------------------------------- the generator
class TISynthGenerator(nn.Module):
    """Frozen base (UNet, autoencoder, text encoder) + mask ControlNet + Ref ControlNet + AIA.

    Build with :func:`build_generator` or :meth:`from_pretrained`; save with
    :meth:`save_pretrained`. All parameters start frozen; :meth:`set_trainable` unfreezes the
    ones a training stage trains.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        registry: ClassRegistry,
        unet: UNet2DConditionModel,
        autoencoder: LatentAutoencoder,
        text_encoder: CLIPTextModel,
        tokenizer: Any,
        scheduler_config: Mapping[str, Any],
        mask_controlnet: ControlNetModel,
        ref_controlnet: ControlNetModel,
        aia_state: Mapping[str, torch.Tensor] | None = None,
        mask_cond_state: Mapping[str, torch.Tensor] | None = None,
        style_cond_state: Mapping[str, torch.Tensor] | None = None,
    ):
        super().__init__()
        self.config = dict(config)
        self.registry = registry
        self.unet = unet
        self.autoencoder = autoencoder
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.mask_controlnet = mask_controlnet
        self.ref_controlnet = ref_controlnet
        set_hint_stride(self.ref_controlnet, 1)
        self._validate()
        self.sites: list[AIASite] = derive_aia_sites(unet, include_mid=bool(self.config["train_mid_aia"]), heads=self.config.get("aia_heads"))
        self.aia = nn.ModuleDict({s.name: AIALayer(s.dim, s.kv_dim, s.heads) for s in self.sites})
        if aia_state is not None:
            _load_exactly(self.aia, aia_state, "AIA weights do not fit the UNet's sites", "; was train_mid_aia or the UNet changed?")
        self.features = FeatureStore()
        self._hooks = attach_aia(self.unet, self.sites, self.aia, self.features)
        self.mask_cond = build_mask_conditioning(
            str(self.config.get("mask_conditioning", "controlnet")), unet, registry.num_classes,
            int(self.config.get("mask_conditioning_hidden", 32)),
        )
        if mask_cond_state is not None:
            _load_exactly(self.mask_cond, mask_cond_state, "mask-conditioning weights do not fit the UNet")
        self.mask_store = MaskStore()
        self._hooks += attach_mask_conditioning(self.unet, self.mask_cond, self.mask_store)
        # the global style path (after the mask modulation at each site); None for the paper's model
        self.style_cond = build_style_conditioning(
            str(self.config.get("style_conditioning", "none")), unet, autoencoder.latent_channels,
            int(self.config.get("style_conditioning_hidden", 128)),
        )
        self.style_store = StyleStore()
        if self.style_cond is not None:
            if style_cond_state is not None:
                _load_exactly(self.style_cond, style_cond_state, "style-conditioning weights do not fit the UNet")
            self._hooks += attach_style_conditioning(self.unet, self.style_cond, self.style_store)
        self.needed_skips: list[int] = sorted({s.skip_index for s in self.sites if s.skip_index != MID})
        self.need_mid: bool = any(s.skip_index == MID for s in self.sites)
        self.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------------ checks
    def _validate(self) -> None:
        k = self.registry.num_classes
        enc = self.config["control_encoding"]
        latent = self.autoencoder.latent_channels
        if self.unet.config.in_channels != latent or self.unet.config.out_channels != latent:
            raise GeneratorError(
                f"UNet in/out channels {self.unet.config.in_channels}/{self.unet.config.out_channels} do not match "
                f"the autoencoder's {latent} latent channels ({self.autoencoder.kind})"
            )
        want = control_channels(k, enc)
        got = self.mask_controlnet.config.conditioning_channels
        if got != want:
            raise GeneratorError(
                f"the mask ControlNet takes {got} control channels, but the registry has {k} classes and "
                f"control_encoding {enc!r} needs {want}; rebuild the generator for this registry"
            )
        f = self.autoencoder.downsample_factor
        if hint_factor(self.mask_controlnet) != f:
            raise GeneratorError(
                f"the mask ControlNet's hint encoder downsamples by {hint_factor(self.mask_controlnet)}, the autoencoder by {f}"
            )
        if self.ref_controlnet.config.conditioning_channels != latent:
            raise GeneratorError(
                f"the Ref ControlNet takes {self.ref_controlnet.config.conditioning_channels} hint channels, "
                f"but the Ref latent has {latent}"
            )
        text_dim = self.text_encoder.config.hidden_size
        if self.unet.config.cross_attention_dim != text_dim:
            raise GeneratorError(f"UNet cross_attention_dim {self.unet.config.cross_attention_dim} != text encoder width {text_dim}")
        for name, cn in (("mask", self.mask_controlnet), ("Ref", self.ref_controlnet)):
            if len(cn.controlnet_down_blocks) != len(skip_channels(self.unet)):
                raise GeneratorError(f"the {name} ControlNet's encoder does not mirror the UNet's ({len(cn.controlnet_down_blocks)} outputs)")

    def check_image_size(self, height: int, width: int) -> None:
        """Raise :class:`AutoencoderError` if ``height × width`` images cannot be used."""
        self.autoencoder.check_image_size(height, width)

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        return self.registry.num_classes

    @property
    def mask_residual(self) -> bool:
        """In ``tisynth`` mode, also add the mask ControlNet's outputs residually (see config)."""
        return bool(self.config.get("mask_residual", False))

    @property
    def style_first(self) -> bool:
        """The base UNet itself takes the Ref's look, through the global style path (``style_conditioning: global``)."""
        return self.style_cond is not None

    @property
    def mask_first(self) -> bool:
        """The base UNet itself is conditioned on the mask (``mask_conditioning`` spade/concat)."""
        return str(self.config.get("mask_conditioning", "controlnet")) != "controlnet"

    @property
    def control_encoding(self) -> str:
        return str(self.config["control_encoding"])

    @property
    def control_channels(self) -> int:
        return control_channels(self.num_classes, self.control_encoding)

    @property
    def latent_channels(self) -> int:
        return self.autoencoder.latent_channels

    @property
    def downsample_factor(self) -> int:
        return self.autoencoder.downsample_factor

    @property
    def max_length(self) -> int:
        return int(self.config["tokenizer"]["max_length"])

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    # ------------------------------------------------------------------ encoders
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompt embeddings ``B × max_length × D`` on the model's device."""
        return encode_prompts(self.tokenizer, self.text_encoder, prompts, self.max_length, self.device)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] (B×3×H×W) -> latents, on the model's device (fp32)."""
        return self.autoencoder.encode(images.to(self.device), generator=generator).float()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] (fp32)."""
        return self.autoencoder.decode(latents.to(self.device)).float()

    def encode_control(self, masks: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Index-space masks (B×H×W) -> control images on the model's device."""
        return encode_control(masks, self.num_classes, self.control_encoding, device=self.device)

    # ------------------------------------------------------------------ forward
    def aia_features(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        control: torch.Tensor,
        ref_latents: torch.Tensor,
        reference_path: bool = False,
        conditioning_scale: float = 1.0,
        mask_outputs: tuple[dict[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-site (Ref tokens, mask tokens) from both ControlNets (``mask_outputs``: the mask
        ControlNet's outputs when they were already computed)."""
        feats = {}
        per_net = []
        for cn, hint in ((self.ref_controlnet, ref_latents), (self.mask_controlnet, control)):
            if cn is self.mask_controlnet and mask_outputs is not None:
                per_net.append(mask_outputs)
                continue
            grad = torch.is_grad_enabled() and any(p.requires_grad for p in cn.parameters())
            with torch.set_grad_enabled(grad):
                if reference_path:
                    down, mid = cn(sample, timesteps, text, hint, conditioning_scale=conditioning_scale, return_dict=False)
                    outs = dict(enumerate(down))
                else:
                    outs, mid = run_controlnet(cn, sample, timesteps, text, hint, self.needed_skips, self.need_mid, conditioning_scale)
            per_net.append((outs, mid))
        (r_out, r_mid), (m_out, m_mid) = per_net
        for s in self.sites:
            r = r_mid if s.skip_index == MID else r_out[s.skip_index]
            m = m_mid if s.skip_index == MID else m_out[s.skip_index]
            feats[s.name] = (feature_tokens(r), feature_tokens(m))
        return feats

    def predict_noise(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor | int,
        text: torch.Tensor,
        control: torch.Tensor | None = None,
        ref_latents: torch.Tensor | None = None,
        mode: str = "tisynth",
        reference_path: bool = False,
        conditioning_scale: float = 1.0,
        cond_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The UNet's prediction (ε or v, per the scheduler config) for noisy latents ``sample``.

        Args:
            sample: noisy latents B×C×h×w.
            timesteps: scalar or B timesteps.
            text: prompt embeddings B×L×D.
            control: control images B×C_ctrl×H×W (modes ``controlnet``, ``tisynth``).
            ref_latents: Ref latents B×C×h×w (mode ``tisynth``).
            mode: ``base`` | ``controlnet`` | ``tisynth`` (see the module docstring).
            reference_path: ``tisynth`` mode only: compute all ControlNet outputs with the stock
                ``ControlNetModel.forward`` (the authors' behaviour) instead of only the used ones.
            conditioning_scale: multiplies every ControlNet output (1.0 in the paper).
            cond_keep: per-item booleans (mask-first models): items with ``False`` get the
                dropped mask condition (all-zero mask map and control image), for
                classifier-free guidance. ``None``: keep every mask.
        """
        if mode not in MODES:
            raise GeneratorError(f"mode must be one of {MODES}, got {mode!r}")
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor(timesteps, device=sample.device)
        self.features.clear()
        self.mask_store.clear()
        self.style_store.clear()
        if self.style_cond is not None:
            # the global style path acts in every mode; without a Ref it sees the dropped (all-zero) Ref
            if ref_latents is not None and ref_latents.shape[1:] != sample.shape[1:]:
                raise GeneratorError(f"Ref latents {tuple(ref_latents.shape)} and noisy latents {tuple(sample.shape)} differ in shape")
            style_ref = ref_latents if ref_latents is not None else torch.zeros_like(sample)
            grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.style_cond.parameters())
            with torch.set_grad_enabled(grad):
                self.style_store.set(self.style_cond.embedding(style_ref))
        if mode == "base" and not self.mask_first:
            return self.unet(sample, timesteps, text, return_dict=False)[0]
        if control is None:
            raise GeneratorError(f"mode {mode!r} needs a control image (encode the masks with encode_control)")
        if control.shape[1] != self.control_channels:
            raise GeneratorError(
                f"control image has {control.shape[1]} channels; this generator expects {self.control_channels} "
                f"({self.num_classes} classes, encoding {self.control_encoding!r})"
            )
        if self.mask_first:
            if cond_keep is not None:
                control = control * torch.as_tensor(cond_keep, device=control.device).view(-1, 1, 1, 1).to(control.dtype)
            # one-hot classes + the explicit ignore channel; a dropped mask is all zeros
            ignore = (1.0 - control.sum(1, keepdim=True)).clamp_(min=0.0)
            if cond_keep is not None:
                ignore = ignore * torch.as_tensor(cond_keep, device=control.device).view(-1, 1, 1, 1).to(control.dtype)
            self.mask_store.set(torch.cat([control, ignore], 1))
            if mode == "base":
                return self.unet(sample, timesteps, text, return_dict=False)[0]
        if mode == "controlnet":
            down, mid = self.mask_controlnet(sample, timesteps, text, control, conditioning_scale=conditioning_scale, return_dict=False)
            return self.unet(
                sample, timesteps, text, down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False
            )[0]
        if ref_latents is None:
            raise GeneratorError("mode 'tisynth' needs Ref latents (encode the Ref images with encode_images)")
        if ref_latents.shape[1:] != sample.shape[1:]:
            raise GeneratorError(f"Ref latents {tuple(ref_latents.shape)} and noisy latents {tuple(sample.shape)} differ in shape")
        if self.mask_residual:
            # the mask ControlNet's outputs feed the AIA sites *and* the UNet residually
            grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.mask_controlnet.parameters())
            with torch.set_grad_enabled(grad):
                down, mid = self.mask_controlnet(
                    sample, timesteps, text, control, conditioning_scale=conditioning_scale, return_dict=False
                )
            self.features.set(self.aia_features(sample, timesteps, text, control, ref_latents, reference_path,
                                                conditioning_scale, mask_outputs=(dict(enumerate(down)), mid)))
            return self.unet(sample, timesteps, text, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid, return_dict=False)[0]
        self.features.set(self.aia_features(sample, timesteps, text, control, ref_latents, reference_path, conditioning_scale))
        # features stay in the store until the next call so that checkpointed blocks can recompute
        return self.unet(sample, timesteps, text, return_dict=False)[0]

    def controlnet_from_unet(self, which: str, only: Collection[str] | None = None) -> None:
        """Start the ``mask`` or ``ref`` ControlNet as a copy of the UNet's current encoder.

        A ControlNet is a trainable copy of the encoder of the base it steers. The build copies
        the UNet as it is then; when the base is trained first (stage ``base``, from scratch)
        the copy taken at build time is of random weights, so stages A and B call this first.
        With a pretrained, untouched base it changes nothing. ``only``: see :func:`copy_unet_encoder`.
        """
        if which not in ("mask", "ref"):
            raise GeneratorError(f"which must be 'mask' or 'ref', got {which!r}")
        copy_unet_encoder(self.mask_controlnet if which == "mask" else self.ref_controlnet, self.unet, only)

    def clear_features(self) -> None:
        """Drop the AIA features, the mask map and the style embedding kept from the last call."""
        self.features.clear()
        self.mask_store.clear()
        self.style_store.clear()

    # ------------------------------------------------------------------ training helpers
    def trainable_parameter_names(self, stage: str, train_unet_decoder: bool = False) -> list[str]:
        """Names of the parameters a training stage trains.

        * ``base``: the UNet (text-to-image pre-training when no pretrained base exists);
        * ``A``: the mask ControlNet (base frozen);
        * ``B``: the used part of the Ref ControlNet and every AIA layer (mask ControlNet frozen);
        * with ``train_unet_decoder`` (stages A and B) also the UNet's middle block, decoder and
          output layers (the authors' earlier ``ftdecoder`` variant, METHOD §7.2; off by default,
          meant for bases trained from scratch, which have not learnt to use the conditions).
        """
        if stage not in STAGES:
            raise GeneratorError(f"training stage must be one of {STAGES}, got {stage!r}")
        if train_unet_decoder and stage == "base":
            raise GeneratorError("train_unet_decoder applies to stages A and B (base trains the whole UNet)")
        if stage == "base":
            # a global style path trains from the base's first step (the Ref conditions the base, as the mask does)
            prefixes = ["unet.", "mask_cond.", "style_cond."]
        elif stage == "A":
            prefixes = ["mask_controlnet."]
        else:
            used = controlnet_used_prefixes(self.ref_controlnet, self.needed_skips, self.need_mid)
            prefixes = [f"ref_controlnet.{p}." for p in used] + ["aia.", "style_cond."]
            if self.mask_first:  # no stage A: the mask ControlNet's AIA features train here, jointly
                used_m = controlnet_used_prefixes(self.mask_controlnet, self.needed_skips, self.need_mid)
                prefixes += [f"mask_controlnet.{p}." for p in used_m]
        if train_unet_decoder:
            prefixes += ["unet.mid_block.", "unet.up_blocks.", "unet.conv_norm_out.", "unet.conv_out."]
            prefixes += [f"mask_cond.{k}." for k in self.mask_cond if k.startswith(("mid_block", "up_blocks"))]
        return [n for n, _ in self.named_parameters() if any(n.startswith(p) for p in prefixes)]

    def set_trainable(self, stage: str, train_unet_decoder: bool = False) -> list[str]:
        """Freeze everything, unfreeze the parameters of ``stage``; returns their names."""
        names = set(self.trainable_parameter_names(stage, train_unet_decoder))
        for n, p in self.named_parameters():
            p.requires_grad_(n in names)
        return sorted(names)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Gradient checkpointing in the UNet and both ControlNets."""
        for m in (self.unet, self.mask_controlnet, self.ref_controlnet):
            if enabled:
                m.enable_gradient_checkpointing()
            else:
                m.disable_gradient_checkpointing()

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | Path) -> None:
        """Write every part into ``folder`` (safetensors weights + JSON configs).

        Layout: ``tisynth_generator.json`` (config, class registry, AIA sites), ``unet/``,
        ``controlnet_mask/``, ``controlnet_ref/``, ``aia/aia.safetensors``, ``autoencoder/``,
        ``text_encoder/``, ``tokenizer/``, ``scheduler/``.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet")
        self.mask_controlnet.save_pretrained(folder / "controlnet_mask")
        self.ref_controlnet.save_pretrained(folder / "controlnet_ref")
        (folder / "aia").mkdir(exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.aia.state_dict().items()}, str(folder / "aia" / "aia.safetensors"))
        if len(self.mask_cond):
            (folder / "mask_cond").mkdir(exist_ok=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in self.mask_cond.state_dict().items()},
                      str(folder / "mask_cond" / "mask_cond.safetensors"))
        if self.style_cond is not None:
            (folder / "style_cond").mkdir(exist_ok=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in self.style_cond.state_dict().items()},
                      str(folder / "style_cond" / "style_cond.safetensors"))
        self.autoencoder.save_pretrained(folder / "autoencoder")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(folder / "scheduler")
        meta = {
            "format_version": FORMAT_VERSION,
            "config": self.config,
            "registry": self.registry.to_dict(),
            "sites": [s.to_dict() for s in self.sites],
            "ref_hint_stride": 1,
        }
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, registry: ClassRegistry | None = None, device: str | torch.device | None = None
    ) -> TISynthGenerator:
        """Load a generator written by :meth:`save_pretrained`.

        Args:
            folder: the saved folder.
            registry: optional; if given it must have the same classes as the saved one.
            device: where to put the model (default: CPU).
        """
        folder = Path(folder)
        meta_path = folder / CONFIG_FILE
        if not meta_path.is_file():
            raise GeneratorError(f"{folder}: no {CONFIG_FILE}; not a saved TISynth generator")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise GeneratorError(f"{meta_path}: format version {meta.get('format_version')} not supported (expected {FORMAT_VERSION})")
        saved = ClassRegistry.from_dict(meta["registry"])
        cfg = meta["config"]
        differences = saved.class_differences(registry) if registry is not None else []
        if differences:
            raise GeneratorError(f"{folder}: trained for other classes than the given registry: {differences}")
        model = cls(
            meta["config"],
            saved,
            UNet2DConditionModel.from_pretrained(folder / "unet"),
            load_autoencoder(folder / "autoencoder"),
            CLIPTextModel.from_pretrained(folder / "text_encoder"),
            AutoTokenizer.from_pretrained(folder / "tokenizer"),
            dict(DDPMScheduler.from_pretrained(folder / "scheduler").config),
            ControlNetModel.from_pretrained(folder / "controlnet_mask"),
            ControlNetModel.from_pretrained(folder / "controlnet_ref"),
            aia_state=read_safetensors(folder / "aia" / "aia.safetensors"),
            mask_cond_state=_part_weights(
                folder / "mask_cond" / "mask_cond.safetensors", cfg.get("mask_conditioning", "controlnet") != "controlnet",
                f"the generator is mask-conditioned ({cfg.get('mask_conditioning')})"),
            style_cond_state=_part_weights(folder / "style_cond" / "style_cond.safetensors",
                                           cfg.get("style_conditioning", "none") != "none",
                                           "the generator has a global style path"),
        )
        if device is not None:
            model.to(device)
        return model

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (for logs and reports)."""
        parts = {
            "unet": self.unet,
            "mask_controlnet": self.mask_controlnet,
            "ref_controlnet": self.ref_controlnet,
            "aia": self.aia,
            "mask_cond": self.mask_cond,
            "style_cond": self.style_cond if self.style_cond is not None else nn.ModuleDict(),
            "text_encoder": self.text_encoder,
            "autoencoder": self.autoencoder,
        }
        return {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()
                if k not in ("mask_cond", "style_cond") or sum(1 for _ in m.parameters())}


def _load_exactly(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, hint: str = "") -> None:
    """Load ``state`` into ``module``; any missing or unexpected key is a :class:`GeneratorError`."""
    result = module.load_state_dict(dict(state), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise GeneratorError(f"{what} (missing {result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]}){hint}")


def _part_weights(path: Path, used: bool, what: str) -> dict[str, torch.Tensor] | None:
    """The weights of an optional part (None when the config does not use it); a used part's missing file is an error."""
    if not used:
        return None
    if not path.is_file():
        raise GeneratorError(f"{path} is missing: {what} but its weights are not there")
    return read_safetensors(path)


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def build_generator(config: Mapping[str, Any] | None, registry: ClassRegistry, seed: int | None = 0) -> TISynthGenerator:
    """Build a generator from a (preset-based) config dict and the class registry.

    Random parts are initialised from ``seed`` (without touching the global RNG); pass ``None``
    to use the global RNG. See :mod:`tisynth.generator.config` for the keys.
    """
    cfg = resolve_generator_config(config)
    with _seeded(seed):
        return _build(cfg, registry)


def _build(cfg: dict[str, Any], registry: ClassRegistry) -> TISynthGenerator:
    from tisynth.generator.autoencoders import KLAutoencoder
    from tisynth.generator.ldm import SINGLE_FILE_OPTIONS, is_single_file, load_single_file

    kw = dict(cfg.get("pretrained_kwargs") or {})
    base = cfg.get("pretrained")
    ae_cfg = dict(cfg["autoencoder"])
    if base and is_single_file(base):
        # one file in the original LDM layout (e.g. v1-5-pruned-emaonly.safetensors), loaded offline
        # and strictly; pretrained_kwargs: original_config (LDM yaml), tokenizer (folder or hub id)
        unknown = set(kw) - SINGLE_FILE_OPTIONS
        if unknown and not kw.get("tokenizer"):
            raise GeneratorConfigError(
                f"pretrained {base} is a single file: pretrained_kwargs {sorted(unknown)} apply only to a tokenizer given "
                f"by pretrained_kwargs.tokenizer; the single-file options are {sorted(SINGLE_FILE_OPTIONS)}"
            )
        if ae_cfg.get("type") != "kl":
            raise GeneratorConfigError(f"pretrained {base} holds a KL autoencoder; autoencoder.type {ae_cfg.get('type')!r} cannot use it")
        parts = load_single_file(base, **kw)
        ae_cfg.pop("config", None)
        ae_cfg["pretrained"] = base
        autoencoder = KLAutoencoder(parts.vae, posterior=ae_cfg.get("posterior", "mode"))
        autoencoder.requires_grad_(False)
        autoencoder.eval()
        unet, text_encoder, tokenizer = parts.unet, parts.text_encoder, parts.tokenizer
        scheduler_config = dict(parts.scheduler_config)
        cfg["scheduler"] = dict(scheduler_config)
        cfg["autoencoder"] = ae_cfg
    elif base:
        if ae_cfg.get("type") == "kl" and not ae_cfg.get("pretrained"):
            ae_cfg.pop("config", None)
            ae_cfg["pretrained"] = base
        autoencoder = build_autoencoder(ae_cfg, pretrained_base=base, **kw)
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", **kw)
        text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **kw)
        tokenizer = AutoTokenizer.from_pretrained(base, subfolder="tokenizer", **kw)
        scheduler_config = dict(DDPMScheduler.from_pretrained(base, subfolder="scheduler", **kw).config)
        cfg["scheduler"] = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        cfg["autoencoder"] = ae_cfg
        text_encoder.requires_grad_(False)
    else:
        autoencoder = build_autoencoder(ae_cfg, **kw)
        max_length = int(cfg["tokenizer"]["max_length"])
        words = prompt_vocabulary(registry, cfg["prompt_template"], cfg["tokenizer"].get("extra_words") or [])
        tokenizer = build_word_tokenizer(words, max_length)
        text_encoder = build_text_encoder(cfg["text_encoder"], tokenizer, max_length)
        unet_cfg = dict(cfg["unet"])
        latent = autoencoder.latent_channels
        for key, value in (
            ("in_channels", latent),
            ("out_channels", latent),
            ("cross_attention_dim", text_encoder.config.hidden_size),
        ):
            if key in unet_cfg and unet_cfg[key] != value:
                raise GeneratorConfigError(f"unet.{key} = {unet_cfg[key]} contradicts the derived value {value}; leave it out")
            unet_cfg[key] = value
        unet_cfg.setdefault("sample_size", max(1, cfg["image_size"] // autoencoder.downsample_factor))
        unet = UNet2DConditionModel(**unet_cfg)
        scheduler_config = dict(cfg["scheduler"])
    factor = autoencoder.downsample_factor
    if cfg["image_size"] % factor:
        raise GeneratorConfigError(f"image_size {cfg['image_size']} is not divisible by the autoencoder factor {factor}")
    mask_cn = ControlNetModel.from_unet(
        unet,
        conditioning_channels=control_channels(registry.num_classes, cfg["control_encoding"]),
        conditioning_embedding_out_channels=tuple(hint_channels_for_factor(factor, cfg.get("mask_hint_channels"))),
    )
    if not cfg.get("mask_hint_zero_init", True):
        # the output convs stay zero, so the model is still unchanged at initialisation
        mask_cn.controlnet_cond_embedding.conv_out.reset_parameters()
    ref_hint = cfg.get("ref_hint_channels") or [16, 32, 96, 256]
    ref_cn = ControlNetModel.from_unet(
        unet, conditioning_channels=autoencoder.latent_channels, conditioning_embedding_out_channels=tuple(ref_hint)
    )
    if not cfg.get("ref_hint_zero_init", True):
        # AIA's output projections stay zero, so the model is still unchanged at initialisation
        ref_cn.controlnet_cond_embedding.conv_out.reset_parameters()
    init_output_convs_identity(ref_cn)
    unet.requires_grad_(False)
    return TISynthGenerator(cfg, registry, unet, autoencoder, text_encoder, tokenizer, scheduler_config, mask_cn, ref_cn)
