"""diffusers modules -> state dicts in the original LDM / ControlNet / TISynth key layout (tests only).

Written from the layout's description (METHOD §2.1–2.5, §2.9), independently of the
loaders under test, which go the other way with diffusers' own converters; a round trip through
both therefore checks each against the other.

LDM UNet (``openaimodel``) numbering with L res-blocks per level: ``input_blocks.0.0`` is the
input conv; level b's k-th res-block (and its transformer) is ``input_blocks.{1 + b(L+1) + k}.0``
(``.1``); its downsampler ``input_blocks.{(b+1)(L+1)}.0.op``; the middle block is
``middle_block.{0,1,2}`` (res, transformer, res); decoder level b's k-th res-block is
``output_blocks.{b(L+1) + k}.0`` (transformer ``.1``, upsampler ``.1.conv`` or ``.2.conv`` on its
last layer); ``time_embed.{0,2}``, ``out.{0,2}``. A ControlNet adds ``zero_convs.{i}.0``,
``middle_block_out.0`` and the hint encoder ``input_hint_block.{0,2,…,14}`` (convs between SiLUs).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_AIA = {"ref_norm": "norm00_trainable", "ref_attn": "attn00_ls_trainable",
        "mask_norm": "norm01_trainable", "mask_attn": "attn01_ssl_trainable"}
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")


def _sub(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _put(out: dict[str, torch.Tensor], prefix: str, part: Mapping[str, torch.Tensor], rename: Mapping[str, str] | None = None) -> None:
    for key, value in part.items():
        first, _, rest = key.partition(".")
        name = f"{rename[first]}.{rest}" if rename and first in rename else key
        out[f"{prefix}{name}"] = value.detach().clone()


def _encoder(state: Mapping[str, torch.Tensor], layers: int, n_levels: int) -> dict[str, torch.Tensor]:
    """Time embedding, input conv, down blocks and middle block (shared by UNets and ControlNets)."""
    out: dict[str, torch.Tensor] = {}
    _put(out, "time_embed.0.", _sub(state, "time_embedding.linear_1."))
    _put(out, "time_embed.2.", _sub(state, "time_embedding.linear_2."))
    _put(out, "input_blocks.0.0.", _sub(state, "conv_in."))
    for b in range(n_levels):
        for k in range(layers):
            i = 1 + b * (layers + 1) + k
            _put(out, f"input_blocks.{i}.0.", _sub(state, f"down_blocks.{b}.resnets.{k}."), _RESNET)
            _put(out, f"input_blocks.{i}.1.", _sub(state, f"down_blocks.{b}.attentions.{k}."))
        _put(out, f"input_blocks.{(b + 1) * (layers + 1)}.0.op.", _sub(state, f"down_blocks.{b}.downsamplers.0.conv."))
    _put(out, "middle_block.0.", _sub(state, "mid_block.resnets.0."), _RESNET)
    _put(out, "middle_block.1.", _sub(state, "mid_block.attentions.0."))
    _put(out, "middle_block.2.", _sub(state, "mid_block.resnets.1."), _RESNET)
    return out


def unet_to_ldm(unet: nn.Module) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` -> ``openaimodel.UNetModel`` keys (no prefix)."""
    state = unet.state_dict()
    layers = int(unet.config.layers_per_block)
    n = len(unet.config.block_out_channels)
    out = _encoder(state, layers, n)
    for b in range(n):
        for k in range(layers + 1):
            i = b * (layers + 1) + k
            _put(out, f"output_blocks.{i}.0.", _sub(state, f"up_blocks.{b}.resnets.{k}."), _RESNET)
            attn = _sub(state, f"up_blocks.{b}.attentions.{k}.")
            _put(out, f"output_blocks.{i}.1.", attn)
        last = b * (layers + 1) + layers
        slot = 2 if _sub(state, f"up_blocks.{b}.attentions.{layers}.") else 1
        _put(out, f"output_blocks.{last}.{slot}.conv.", _sub(state, f"up_blocks.{b}.upsamplers.0.conv."))
    _put(out, "out.0.", _sub(state, "conv_norm_out."))
    _put(out, "out.2.", _sub(state, "conv_out."))
    if len(out) != len(state):
        raise AssertionError(f"unet_to_ldm mapped {len(out)} of {len(state)} tensors")
    return out


def controlnet_to_ldm(controlnet: nn.Module) -> dict[str, torch.Tensor]:
    """A diffusers ``ControlNetModel`` -> ``cldm.ControlNet`` keys (no prefix)."""
    state = controlnet.state_dict()
    layers = int(controlnet.config.layers_per_block)
    n = len(controlnet.config.block_out_channels)
    out = _encoder(state, layers, n)
    for i in range(len(controlnet.controlnet_down_blocks)):
        _put(out, f"zero_convs.{i}.0.", _sub(state, f"controlnet_down_blocks.{i}."))
    _put(out, "middle_block_out.0.", _sub(state, "controlnet_mid_block."))
    emb = controlnet.controlnet_cond_embedding
    _put(out, "input_hint_block.0.", _sub(state, "controlnet_cond_embedding.conv_in."))
    for j in range(len(emb.blocks)):
        _put(out, f"input_hint_block.{2 * (j + 1)}.", _sub(state, f"controlnet_cond_embedding.blocks.{j}."))
    _put(out, f"input_hint_block.{2 * (len(emb.blocks) + 1)}.", _sub(state, "controlnet_cond_embedding.conv_out."))
    if len(out) != len(state):
        raise AssertionError(f"controlnet_to_ldm mapped {len(out)} of {len(state)} tensors")
    return out


def vae_to_ldm(vae: nn.Module) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` -> ``ldm.models.autoencoder.AutoencoderKL`` keys (no prefix)."""
    state = vae.state_dict()
    n = len(vae.config.block_out_channels)
    out: dict[str, torch.Tensor] = {}
    res = {"conv_shortcut": "nin_shortcut"}

    def attention(prefix: str, src: str) -> None:
        names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
        for key, value in _sub(state, src).items():
            first, _, rest = key.partition(".")
            if first == "to_out":
                rest = rest.partition(".")[2]  # to_out.0.weight -> proj_out.weight
            v = value.detach().clone()
            if first != "group_norm" and rest == "weight":
                v = v[:, :, None, None]  # linear -> 1x1 conv
            out[f"{prefix}{names[first]}.{rest}"] = v

    for side in ("encoder", "decoder"):
        for name in ("conv_in", "conv_out"):
            _put(out, f"{side}.{name}.", _sub(state, f"{side}.{name}."))
        _put(out, f"{side}.norm_out.", _sub(state, f"{side}.conv_norm_out."))
        _put(out, f"{side}.mid.block_1.", _sub(state, f"{side}.mid_block.resnets.0."))
        _put(out, f"{side}.mid.block_2.", _sub(state, f"{side}.mid_block.resnets.1."))
        attention(f"{side}.mid.attn_1.", f"{side}.mid_block.attentions.0.")
    for i in range(n):
        for j in range(len(vae.encoder.down_blocks[i].resnets)):
            _put(out, f"encoder.down.{i}.block.{j}.", _sub(state, f"encoder.down_blocks.{i}.resnets.{j}."), res)
        _put(out, f"encoder.down.{i}.downsample.conv.", _sub(state, f"encoder.down_blocks.{i}.downsamplers.0.conv."))
        level = n - 1 - i  # the LDM decoder numbers its levels from the lowest resolution up
        for j in range(len(vae.decoder.up_blocks[i].resnets)):
            _put(out, f"decoder.up.{level}.block.{j}.", _sub(state, f"decoder.up_blocks.{i}.resnets.{j}."), res)
        _put(out, f"decoder.up.{level}.upsample.conv.", _sub(state, f"decoder.up_blocks.{i}.upsamplers.0.conv."))
    _put(out, "quant_conv.", _sub(state, "quant_conv."))
    _put(out, "post_quant_conv.", _sub(state, "post_quant_conv."))
    if len(out) != len(state):
        raise AssertionError(f"vae_to_ldm mapped {len(out)} of {len(state)} tensors")
    return out


def schedule_buffers(beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000) -> dict[str, torch.Tensor]:
    """The noise-schedule buffers an LDM ``LatentDiffusion`` state dict carries (linear in sqrt β)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1 - prev) / (1 - ac)
    values = {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": prev, "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(), "log_one_minus_alphas_cumprod": (1 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(), "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(),
        "posterior_variance": post_var, "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1 - ac), "posterior_mean_coef2": (1 - prev) * alphas.sqrt() / (1 - ac),
    }  # fmt: skip
    return {k: v.float() for k, v in values.items()}


def sd_single_file(unet: nn.Module, vae: nn.Module, text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    """A Stable Diffusion single file: UNet, VAE, CLIP text model and the schedule buffers."""
    out = {f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(unet).items()}
    out.update({f"first_stage_model.{k}": v for k, v in vae_to_ldm(vae).items()})
    for k, v in text_encoder.state_dict().items():  # the files' layout: transformers 4's text_model.* names
        out[f"cond_stage_model.transformer.{k if k.startswith('text_model.') else 'text_model.' + k}"] = v.detach().clone()
    n = text_encoder.config.max_position_embeddings
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(n)[None]
    out.update(schedule_buffers())
    return out


def aia_to_ldm(generator: nn.Module) -> dict[str, torch.Tensor]:
    """The generator's AIA layers under the authors' names in ``model.diffusion_model``."""
    out: dict[str, torch.Tensor] = {}
    for site in generator.sites:
        if site.block == "mid":
            block = "middle_block.1"
        else:
            block = f"output_blocks.{3 * site.up_index + site.layer}.1"
        _put(out, f"model.diffusion_model.{block}.transformer_blocks.0.", generator.aia[site.name].state_dict(), _AIA)
    return out


def tisynth_checkpoint(generator: nn.Module) -> dict[str, torch.Tensor]:
    """A TISynth generator as the authors' ``GID_model.ckpt`` state dict (METHOD §2.9): the SD
    single file plus ``control_model.*`` (mask), ``ssl_stage_model.*`` (Ref) and the AIA layers."""
    out = sd_single_file(generator.unet, generator.autoencoder.vae, generator.text_encoder)
    out.update(aia_to_ldm(generator))
    out.update({f"control_model.{k}": v for k, v in controlnet_to_ldm(generator.mask_controlnet).items()})
    out.update({f"ssl_stage_model.{k}": v for k, v in controlnet_to_ldm(generator.ref_controlnet).items()})
    return out


def authors_original_config(base: Mapping, hint_channels: int = 3) -> dict:
    """The authors' model config layout for the architecture of ``base`` (an LDM original config):
    ``unet_config``, ``control_stage_config`` (mask, 3 hint channels) and ``ssl_stage_config``
    (Ref, 4 hint channels) share the UNet's encoder parameters."""
    import copy

    cfg = copy.deepcopy(dict(base))
    params = cfg["model"]["params"]
    unet = params["unet_config"]["params"]
    shared = {k: unet[k] for k in ("image_size", "in_channels", "model_channels", "attention_resolutions", "num_res_blocks",
                                   "channel_mult", "num_heads", "use_spatial_transformer", "transformer_depth", "context_dim",
                                   "legacy")}
    params["control_stage_config"] = {"target": "cldm.cldm.ControlNet", "params": {**shared, "hint_channels": hint_channels}}
    params["ssl_stage_config"] = {"target": "cldm.cldm.ControlNet_latent", "params": {**shared, "hint_channels": 4}}
    cfg["model"]["target"] = "cldm.cldm.ControlLDM"
    return cfg
