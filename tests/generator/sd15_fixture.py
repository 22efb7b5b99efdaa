"""A tiny Stable Diffusion 1.5 look-alike in the exact diffusers layout, written in seconds.

:func:`write_sd15_fixture` writes what ``stable-diffusion-v1-5`` holds (``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) with SD 1.5's structure
and tiny widths and random weights:

* UNet: 4 levels, ``CrossAttnDownBlock2D`` × 3 + ``DownBlock2D``, ``UpBlock2D`` +
  ``CrossAttnUpBlock2D`` × 3, 2 layers per block, 8 heads, conv ``proj_in``/``proj_out``,
  32 normalisation groups (what the original LDM layout implies), widths (32, 32, 64, 64);
* VAE: ``AutoencoderKL``, 4 latent channels, factor 8, widths (32, 32, 32, 32), scaling 0.18215;
* text encoder: a 2-layer ``CLIPTextModel`` of width 64 (one head of 64, CLIP's head width);
* tokenizer: a real byte-level BPE ``CLIPTokenizer`` (``vocab.json`` + ``merges.txt``) whose
  merges make every word of the project's prompts one token;
* scheduler: SD 1.5's ``PNDMScheduler`` config (scaled_linear 0.00085–0.012, ε, steps_offset 1).

:func:`fixture_original_config` describes the same architecture in the original LDM config
layout (``v1-inference.yaml``'s keys), which single-file loading needs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from tisynth.classes import DEFAULT_PROMPT_TEMPLATE
from tisynth.generator.ldm import SD15_ORIGINAL_CONFIG
from tisynth.ingest.demo_scenes import DEMO_CLASSES

UNET_CHANNELS = (32, 32, 64, 64)
VAE_CHANNELS = (32, 32, 32, 32)
TEXT_WIDTH = 64
HEADS = 8
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# every word the project's prompts use: the template, the demo classes, the test registries
PROMPT_WORDS = [
    *DEFAULT_PROMPT_TEMPLATE.replace("{classes}", " ").split(),
    *(c["name"] for c in DEMO_CLASSES),
    "built-up", "farmland", "forest", "meadow", "water", "unlabeled", "photo", "cat",
]  # fmt: skip

SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _words(texts: Iterable[str]) -> list[str]:
    """Lower-cased letter runs and punctuation runs, the pieces CLIP's pre-tokenizer makes."""
    import re

    out: dict[str, None] = {}
    for text in texts:
        for piece in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower()):
            out.setdefault(piece, None)
    return list(out)


def tiny_clip_vocabulary(texts: Iterable[str] = PROMPT_WORDS) -> tuple[dict[str, int], list[str]]:
    """``(vocab, merges)`` of a byte-level BPE that knows every byte and makes each word of
    ``texts`` a single token (merged left to right, the last symbol carrying ``</w>``)."""
    byte_chars = list(bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars]
    merges: list[str] = []
    seen = set(vocab_list)
    encoder = bytes_to_unicode()
    for word in _words(texts):
        symbols = [encoder[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        left = symbols[0]
        for right in symbols[1:]:
            merged = left + right
            if merged not in seen:
                merges.append(f"{left} {right}")
                vocab_list.append(merged)
                seen.add(merged)
            left = merged
    vocab_list += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def write_tokenizer(folder: Path, texts: Iterable[str] = PROMPT_WORDS) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the configs of SD 1.5's ``tokenizer/`` folder."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_clip_vocabulary(texts)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "errors": "replace", "add_prefix_space": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def tiny_unet(cross_attention_dim: int = TEXT_WIDTH, sample_size: int = 8) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=UNET_CHANNELS,
        layers_per_block=2,
        attention_head_dim=HEADS,  # diffusers' SD 1.x name for the number of heads
        norm_num_groups=32,
        cross_attention_dim=cross_attention_dim,
    )


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=VAE_CHANNELS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.18215,
    )


def tiny_text_encoder(vocab_size: int, bos: int, eos: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=TEXT_WIDTH,
            intermediate_size=2 * TEXT_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=TEXT_WIDTH // 64,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=TEXT_WIDTH,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    )


def _randomise(module: torch.nn.Module, generator: torch.Generator, std: float = 0.05) -> None:
    """Replace zero-initialised tensors (diffusers zero-inits some output layers) by small noise,
    so that every weight matters when outputs are compared."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * std)


def write_sd15_fixture(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny SD 1.5-layout model into ``folder`` (created); returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        write_tokenizer(folder / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        text_encoder = tiny_text_encoder(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
        unet = tiny_unet()
        vae = tiny_vae()
        for m in (unet, vae, text_encoder):
            _randomise(m, g)
    scheduler = PNDMScheduler.from_config(SCHEDULER)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(folder / "tokenizer")  # SD 1.5's tokenizer folder: vocab.json + merges.txt, no tokenizer.json
    stale = folder / "tokenizer" / "tokenizer.json"
    if stale.exists():
        stale.unlink()
    return folder


def fixture_original_config() -> dict[str, Any]:
    """The fixture's architecture in the original LDM config layout: SD 1.5's ``v1-inference.yaml``
    (:data:`tisynth.generator.ldm.SD15_ORIGINAL_CONFIG`) with the fixture's sizes."""
    cfg = copy.deepcopy(SD15_ORIGINAL_CONFIG)
    params = cfg["model"]["params"]
    params["image_size"] = 8
    params["unet_config"]["params"].update(
        image_size=8, model_channels=UNET_CHANNELS[0], channel_mult=[c // UNET_CHANNELS[0] for c in UNET_CHANNELS],
        num_heads=HEADS, context_dim=TEXT_WIDTH)
    params["first_stage_config"]["params"]["ddconfig"].update(
        resolution=64, ch=VAE_CHANNELS[0], ch_mult=[c // VAE_CHANNELS[0] for c in VAE_CHANNELS], num_res_blocks=1)
    return cfg


