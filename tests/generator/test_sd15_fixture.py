"""The tiny SD 1.5-layout fixture is read by diffusers as SD and by the generator as the paper's base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import AutoTokenizer, CLIPTokenizer

from tests.generator.sd15_fixture import PROMPT_WORDS, write_sd15_fixture
from tisynth.classes import ClassRegistry
from tisynth.generator import build_generator
from tisynth.generator.aia import MID
from tisynth.ingest.demo_scenes import DEMO_CLASSES


@pytest.fixture(scope="module")
def sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sd15_fixture(tmp_path_factory.mktemp("sd15") / "stable-diffusion-v1-5")


def test_the_fixture_has_stable_diffusion_1_5s_layout(sd15: Path):
    index = json.loads((sd15 / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert {k: tuple(v) for k, v in index.items() if k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")} == {
        "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
        "scheduler": ("diffusers", "PNDMScheduler"),
    }  # fmt: skip
    assert sorted(p.name for p in (sd15 / "tokenizer").iterdir()) == [
        "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    unet = json.loads((sd15 / "unet" / "config.json").read_text())
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert unet["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert unet["layers_per_block"] == 2 and len(unet["block_out_channels"]) == 4
    assert unet["cross_attention_dim"] == json.loads((sd15 / "text_encoder" / "config.json").read_text())["hidden_size"]
    vae = json.loads((sd15 / "vae" / "config.json").read_text())
    assert vae["latent_channels"] == 4 and len(vae["block_out_channels"]) == 4 and vae["scaling_factor"] == 0.18215
    sched = json.loads((sd15 / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["beta_schedule"], sched["beta_start"], sched["beta_end"], sched["prediction_type"], sched["steps_offset"]) == (
        "scaled_linear", 0.00085, 0.012, "epsilon", 1)
    pipe = StableDiffusionPipeline.from_pretrained(sd15, safety_checker=None)  # diffusers reads it as SD
    assert pipe.vae_scale_factor == 8 and isinstance(pipe.tokenizer, CLIPTokenizer)


def test_the_tokenizer_is_a_byte_level_bpe_that_knows_every_prompt_word(sd15: Path):
    tok = AutoTokenizer.from_pretrained(sd15 / "tokenizer")
    assert isinstance(tok, CLIPTokenizer)
    registry = ClassRegistry.from_records(DEMO_CLASSES)
    prompt = registry.prompt(list(range(registry.num_classes)))
    tokens = tok.convert_ids_to_tokens(tok(prompt).input_ids)
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"
    assert tokens[1:5] == ["a</w>", "satellite</w>", "image</w>", "of</w>"]
    assert "built</w>" in tokens and "-</w>" in tokens and "farmland</w>" in tokens
    assert all(t.endswith("</w>") for t in tokens[1:-1])  # whole words, never pieces
    ids = tok(["water", ""], padding="max_length", max_length=77).input_ids
    assert len(ids[0]) == 77 and ids[1][:3] == [tok.bos_token_id, tok.eos_token_id, tok.eos_token_id]
    assert "photo" in PROMPT_WORDS


def test_build_generator_loads_it_with_the_aia_sites_of_stable_diffusion_1_5(sd15: Path):
    registry = ClassRegistry.from_records(DEMO_CLASSES)
    model = build_generator({"preset": "sd15", "pretrained": str(sd15), "image_size": 64}, registry)
    # METHOD §2.4: the middle transformer and every decoder transformer (ldm output blocks 3..11,
    # diffusers up_blocks[1..3].attentions[0..2]); decoder transformer j reads ControlNet output 11 - j
    expected = [("mid_0", MID)] + [(f"up_{j // 3}_{j % 3}", 11 - j) for j in range(3, 12)]
    assert [(s.name, s.skip_index) for s in model.sites] == expected
    widths = [32, 32, 32, 32, 32, 32, 32, 64, 64, 64, 64, 64]  # skip channels, down_block_res_samples order
    assert all(s.kv_dim == (64 if s.skip_index == MID else widths[s.skip_index]) for s in model.sites)
    assert all(s.heads == 8 for s in model.sites)
    assert model.autoencoder.downsample_factor == 8 and model.latent_channels == 4
    assert model.scheduler_config["beta_schedule"] == "scaled_linear" and model.prediction_type == "epsilon"
    folder_unet = StableDiffusionPipeline.from_pretrained(sd15, safety_checker=None).unet.state_dict()
    assert all(torch.equal(v, folder_unet[k]) for k, v in model.unet.state_dict().items())
    # at initialisation (zero AIA outputs) the full model is exactly the SD UNet
    g = torch.Generator().manual_seed(0)
    x, ref = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    text = model.encode_prompts(["a satellite image of water", ""])
    control = model.encode_control(torch.randint(0, registry.num_classes, (2, 64, 64), generator=g).to(torch.uint8))
    with torch.no_grad():
        full = model.predict_noise(x, torch.tensor([10, 900]), text, control, ref)
        base = model.predict_noise(x, torch.tensor([10, 900]), text, mode="base")
    assert full.shape == (2, 4, 8, 8) and torch.equal(full, base)
