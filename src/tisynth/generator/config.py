"""Generator configuration: named size presets and the resolution of user overrides.

A generator config is a plain dict (Kedro parameters). ``preset`` names a base config
(:data:`PRESETS`); every other key overrides it (nested dicts are merged key by key, lists are
replaced). :func:`resolve_generator_config` returns the merged, validated dict that
:func:`tisynth.generator.model.build_generator` uses and that is saved with the model.

Top-level keys:

``preset``
    ``tiny`` | ``small`` | ``sd15``.
``pretrained``
    ``None`` or a local folder / hub id of a diffusers Stable-Diffusion layout (subfolders
    ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``). When set, those parts are
    loaded with ``from_pretrained`` and the preset's ``unet`` / ``text_encoder`` sizes are
    ignored; the ControlNets are initialised from the UNet (``ControlNetModel.from_unet``).
``pretrained_kwargs``
    extra ``from_pretrained`` arguments (``local_files_only``, ``revision``, ``variant`` …).
``image_size``
    the training resolution (square side in pixels); sets the UNet's ``sample_size``.
``autoencoder``
    see :func:`tisynth.generator.autoencoders.build_autoencoder`.
``unet``
    ``UNet2DConditionModel`` config keys (``in_channels``/``out_channels`` come from the
    autoencoder and ``cross_attention_dim`` from the text encoder).
``text_encoder``
    ``CLIPTextConfig`` keys (``vocab_size`` defaults to the tokenizer's size).
``tokenizer``
    ``max_length`` (77), ``extra_words`` (more words for the offline word-level tokenizer).
``scheduler``
    ``DDPMScheduler`` config keys (training noise schedule; sampling derives DDIM from it).
``control_encoding``
    ``onehot`` (K channels) or ``authors`` (3 × index/255), see :mod:`tisynth.generator.control`.
``mask_hint_channels``
    channels of the mask ControlNet's hint encoder; it has ``len - 1`` stride-2 convs, which
    must match the autoencoder's factor. ``None`` derives them from SD's (16, 32, 96, 256).
``ref_hint_channels``
    channels of the Ref ControlNet's stride-1 hint encoder over the Ref latent.
``mask_hint_zero_init``
    ``True`` (ControlNet's rule, the paper, ``sd15``): the last conv of the mask hint encoder
    starts at zero, like the output convs. The mask then reaches the loss through two factors
    that are both zero, and the hint encoder gets no gradient until the output convs have grown
    (ControlNet's slow "sudden convergence"). ``False`` (``tiny``, ``small``): that conv gets
    the default initialisation; the output convs alone keep the model unchanged at step 0.
``ref_hint_zero_init``
    the same choice for the Ref ControlNet's hint encoder. The Ref reaches the UNet only as
    keys/values of AIA attentions whose output projections start at zero; with a zero hint conv
    as well, the ControlNet's features do not depend on the Ref at step 0, so the AIA layers
    first learn from Ref-free features and the hint encoder gets gradient only once they have
    grown: a second-order start. ``True`` (every preset, the paper's rule) or ``False`` (default
    initialisation). On the embedded default (200 base + 50 B steps) ``False`` moved a sample by
    0.021 grey levels for another Ref against 0.010 with ``True`` (61 for another seed): not
    the reason the Ref is ignored at that budget, so the default stays.
``train_mid_aia``
    ``True`` (default): the middle block has an AIA site and stage B trains it (the released
    code builds one but, through a ``no_grad`` bug, never trains it; METHOD §2.6). ``False``:
    no middle site at all, and the Ref/mask ControlNets' middle block and deepest levels are
    not computed.
``mask_residual``
    ``False`` (the paper, and the ``sd15`` preset): in the full model the mask reaches the UNet
    only through the AIA sites. ``True`` (the from-scratch presets ``tiny`` and ``small``): the
    mask ControlNet's outputs are *also* added residually, as in stage A. A UNet trained from
    scratch does not learn to follow masks through AIA alone within a CPU budget (segmenter
    mIoU of synthetic images against their masks about 0.24, against 0.88 with the residual
    path, on the embedded default); the AIA sites still carry both Ref and mask features.
``mask_conditioning``
    ``controlnet`` (the paper, ``sd15``): the base UNet sees no mask; stage A trains a mask
    ControlNet. ``spade`` (``tiny``, ``small``) or ``concat``: a *mask-first* base, conditioned on
    the mask from its first training step (:mod:`tisynth.generator.mask_cond`); stage A is then
    not run, stage B trains the Ref ControlNet, the mask ControlNet's features for AIA and the
    AIA layers on top of it.
``mask_conditioning_hidden``
    width of the SPADE modulation nets (32).
``style_conditioning``
    ``none`` (the paper: the Ref reaches the UNet only through the Ref ControlNet and AIA) or
    ``global``: beside that path, the Ref latent's per-channel mean and standard deviation go
    through a small MLP to a per-channel scale and shift after every ResBlock GroupNorm of the
    UNet (:mod:`tisynth.generator.style_cond`), zero-initialised and trained in stage B. A
    direct route for a Ref's global look (colour, brightness, contrast).
``style_conditioning_hidden``
    width of that MLP (128).
``aia_heads``
    heads of the new attentions; ``None`` uses each site's own self-attention heads.
``prompt_template``
    the template whose words the offline tokenizer knows (default: the registry's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tisynth.classes import DEFAULT_PROMPT_TEMPLATE
from tisynth.params import deep_merge
from tisynth.errors import TisynthError


class GeneratorConfigError(TisynthError, ValueError):
    """A generator config that cannot be built."""


SD_HINT_CHANNELS = (16, 32, 96, 256)
"""Hint-encoder channels of SD ControlNets (three stride-2 convs: factor 8)."""

_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

_COMMON: dict[str, Any] = {
    "pretrained": None,
    "pretrained_kwargs": {},
    "tokenizer": {"max_length": 77, "extra_words": []},
    "scheduler": _SCHEDULER,
    "control_encoding": "onehot",
    "mask_hint_channels": None,
    "mask_hint_zero_init": True,
    "ref_hint_zero_init": True,
    "train_mid_aia": True,
    "mask_residual": False,
    "aia_heads": None,
    "mask_conditioning": "controlnet",
    "mask_conditioning_hidden": 32,
    "style_conditioning": "none",
    "style_conditioning_hidden": 128,
    "prompt_template": DEFAULT_PROMPT_TEMPLATE,
}

# From-scratch presets: zero terminal SNR (Lin et al. 2024), so that at t = T nothing of the
# image survives and the conditions are necessary in training as they are at sampling; this
# needs v-prediction. Masks condition the UNet from its first step (SPADE).
_FROM_SCRATCH = {
    "scheduler": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
    "mask_conditioning": "spade",
    "mask_residual": False,
    "mask_hint_zero_init": False,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Trains on a small CPU in minutes: 64² images -> 48×16×16 latents. The space-to-depth scale 2
    # brings typical tiles (pixel std about 0.4-0.5 in [-1, 1]) to roughly unit latent variance,
    # which the noise schedule assumes (SD's 0.18215 plays the same role). The first UNet level is
    # wider than the 48 latent channels: a narrower one is a bottleneck that cannot carry the noise
    # through (the loss stalls near 0.5). From scratch on pixel-like latents, v-prediction learns
    # usable samples far sooner than ε-prediction, whose x0 estimate explodes at high noise.
    "tiny": {
        "image_size": 64,
        "autoencoder": {"type": "space_to_depth", "factor": 4, "scale": 2.0},
        **_FROM_SCRATCH,
        "unet": {
            "block_out_channels": [64, 96, 96],
            "layers_per_block": 1,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "attention_head_dim": 4,
            "norm_num_groups": 8,
        },
        "text_encoder": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "hidden_act": "quick_gelu",
        },
        "ref_hint_channels": [16, 32],
    },
    # Real data on CPU or GPU: 224² tiles -> 48×56×56 (space-to-depth f4; attention only at 28²
    # and 14²), or TAEF2 latents 32×28×28 with {"autoencoder": {"type": "taef2", "weights_dir":
    # ..., "scale": 1.25}} (TAEF2 latents of gid5 tiles have std about 0.8), which is as fast and
    # gives the diffusion model a perceptual latent space to learn in.
    "small": {
        "image_size": 224,
        "autoencoder": {"type": "space_to_depth", "factor": 4, "scale": 2.0},
        **_FROM_SCRATCH,
        "unet": {
            "block_out_channels": [64, 128, 192],
            "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        },
        "text_encoder": {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "hidden_act": "quick_gelu",
        },
        "ref_hint_channels": [16, 32],
    },
    # Stable Diffusion 1.5 dimensions with random weights (or set `pretrained` to an SD 1.5 copy).
    "sd15": {
        "image_size": 512,
        "autoencoder": {
            "type": "kl",
            "posterior": "mode",
            "config": {
                "in_channels": 3,
                "out_channels": 3,
                "latent_channels": 4,
                "block_out_channels": [128, 256, 512, 512],
                "down_block_types": ["DownEncoderBlock2D"] * 4,
                "up_block_types": ["UpDecoderBlock2D"] * 4,
                "layers_per_block": 2,
                "norm_num_groups": 32,
                "act_fn": "silu",
                "sample_size": 512,
                "scaling_factor": 0.18215,
            },
        },
        "unet": {
            "block_out_channels": [320, 640, 1280, 1280],
            "layers_per_block": 2,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        },
        "text_encoder": {  # CLIP ViT-L/14 text tower
            "vocab_size": 49408,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "projection_dim": 768,
        },
        "ref_hint_channels": list(SD_HINT_CHANNELS),
    },
}

TOP_LEVEL_KEYS = frozenset(
    {
        "preset",
        "pretrained",
        "pretrained_kwargs",
        "image_size",
        "autoencoder",
        "unet",
        "text_encoder",
        "tokenizer",
        "scheduler",
        "control_encoding",
        "mask_hint_channels",
        "mask_hint_zero_init",
        "ref_hint_zero_init",
        "ref_hint_channels",
        "train_mid_aia",
        "mask_residual",
        "aia_heads",
        "mask_conditioning",
        "mask_conditioning_hidden",
        "style_conditioning",
        "style_conditioning_hidden",
        "prompt_template",
    }
)

_REPLACED_WHOLE = frozenset({"autoencoder"})  # a different autoencoder type must not inherit keys


def resolve_generator_config(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``config`` over its preset (default ``tiny``) and validate the top-level keys."""
    config = dict(config or {})
    unknown = set(config) - TOP_LEVEL_KEYS
    if unknown:
        raise GeneratorConfigError(f"unknown generator config key(s) {sorted(unknown)}; allowed: {sorted(TOP_LEVEL_KEYS)}")
    preset = config.get("preset", "tiny")
    if preset not in PRESETS:
        raise GeneratorConfigError(f"unknown generator preset {preset!r}; choose one of {sorted(PRESETS)}")
    base = deep_merge(_COMMON, PRESETS[preset])
    override = {k: v for k, v in config.items() if k not in _REPLACED_WHOLE}
    resolved = deep_merge(base, override)
    if "autoencoder" in config:
        ae = dict(config["autoencoder"])
        same_type = ae.get("type", base["autoencoder"]["type"]) == base["autoencoder"]["type"]
        resolved["autoencoder"] = deep_merge(base["autoencoder"], ae) if same_type else ae
    resolved["preset"] = preset
    size = resolved.get("image_size")
    if not isinstance(size, int) or size < 1:
        raise GeneratorConfigError(f"image_size must be a positive integer, got {size!r}")
    if resolved["control_encoding"] not in ("onehot", "authors"):
        raise GeneratorConfigError(f"control_encoding must be 'onehot' or 'authors', got {resolved['control_encoding']!r}")
    if resolved["mask_conditioning"] not in ("controlnet", "spade", "concat"):
        raise GeneratorConfigError(
            f"mask_conditioning must be 'controlnet', 'spade' or 'concat', got {resolved['mask_conditioning']!r}"
        )
    if resolved["style_conditioning"] not in ("none", "global"):
        raise GeneratorConfigError(f"style_conditioning must be 'none' or 'global', got {resolved['style_conditioning']!r}")
    hidden = resolved["style_conditioning_hidden"]
    if not isinstance(hidden, int) or hidden < 1:
        raise GeneratorConfigError(f"style_conditioning_hidden must be a positive integer, got {hidden!r}")
    if resolved["mask_conditioning"] != "controlnet" and resolved["control_encoding"] != "onehot":
        raise GeneratorConfigError("a mask-first base (mask_conditioning spade/concat) needs control_encoding 'onehot'")
    return resolved


def hint_channels_for_factor(factor: int, channels: list[int] | tuple[int, ...] | None) -> list[int]:
    """Hint-encoder channels with ``log2(factor)`` stride-2 convs.

    ``None`` derives them from SD's (16, 32, 96, 256) (truncated, or extended by doubling);
    given channels are checked.
    """
    if factor < 1 or factor & (factor - 1):
        raise GeneratorConfigError(f"the autoencoder factor {factor} must be a power of two")
    n = factor.bit_length() - 1  # stride-2 convs needed
    if channels is None:
        chans = list(SD_HINT_CHANNELS)
        while len(chans) < n + 1:
            chans.append(chans[-1] * 2)
        return chans[: n + 1]
    chans = [int(c) for c in channels]
    if len(chans) != n + 1:
        raise GeneratorConfigError(
            f"mask_hint_channels {chans} give {len(chans) - 1} stride-2 convs (factor {2 ** (len(chans) - 1)}), "
            f"but the autoencoder downsamples by {factor}: give {n + 1} channel counts or null to derive them"
        )
    return chans
