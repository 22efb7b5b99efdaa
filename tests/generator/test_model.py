"""The generator object: shapes, modes, configuration errors, save/load round trip."""

from __future__ import annotations

import pytest
import torch

from tisynth.classes import ClassRegistry
from tisynth.generator import TISynthGenerator, build_generator, resolve_generator_config
from tisynth.generator.autoencoders import AutoencoderError
from tisynth.generator.config import GeneratorConfigError
from tisynth.generator.model import GeneratorError

from .conftest import PAPER_PATH, perturb_zero_inits


def _batch(model, b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, model.num_classes, (b, h, w), generator=g).to(torch.uint8)
    masks[:, 0, 0] = 255
    z = model.encode_images(torch.rand(b, 3, h, w, generator=g) * 2 - 1)
    return dict(
        sample=torch.randn(z.shape, generator=g),
        timesteps=torch.randint(0, 1000, (b,), generator=g),
        text=model.encode_prompts([f"a satellite image of {n}" for n in model.registry.names[:b]] + [""] * max(0, b - model.num_classes)),
        control=model.encode_control(masks),
        ref_latents=z,
    )


@pytest.mark.parametrize(("b", "h", "w"), [(1, 64, 64), (3, 32, 48), (2, 96, 64)])
@torch.no_grad()
def test_shapes_in_every_mode(tiny, b, h, w):
    perturb_zero_inits(tiny)
    x = _batch(tiny, b, h, w)
    f = tiny.downsample_factor
    assert x["sample"].shape == (b, tiny.latent_channels, h // f, w // f)
    assert x["control"].shape == (b, tiny.num_classes, h, w)
    assert x["text"].shape == (b, 77, tiny.text_encoder.config.hidden_size)
    outs = {}
    for mode in ("base", "controlnet", "tisynth"):
        outs[mode] = tiny.predict_noise(**x, mode=mode)
        assert outs[mode].shape == x["sample"].shape
        assert torch.isfinite(outs[mode]).all()
    assert not torch.allclose(outs["base"], outs["controlnet"])  # residual mask control acts
    assert not torch.allclose(outs["base"], outs["tisynth"])  # AIA acts (perturbed to_out)
    assert tiny.decode_latents(x["ref_latents"]).shape == (b, 3, h, w)


@torch.no_grad()
def test_save_load_round_trip_gives_identical_outputs(tiny, tmp_path):
    perturb_zero_inits(tiny)
    x = _batch(tiny, 2, 64, 64)
    before = {m: tiny.predict_noise(**x, mode=m) for m in ("base", "controlnet", "tisynth")}
    tiny.save_pretrained(tmp_path / "gen")
    names = sorted(p.name for p in (tmp_path / "gen").iterdir())
    assert names == sorted(
        ["tisynth_generator.json", "unet", "controlnet_mask", "controlnet_ref", "aia", "autoencoder", "text_encoder", "tokenizer", "scheduler"]
    )
    assert not list((tmp_path / "gen").rglob("*.bin")) and not list((tmp_path / "gen").rglob("*.pt*"))
    again = TISynthGenerator.from_pretrained(tmp_path / "gen", registry=tiny.registry)
    assert again.config == tiny.config and again.sites == tiny.sites
    assert again.ref_controlnet.controlnet_cond_embedding.blocks[1].stride == (1, 1)
    y = _batch(again, 2, 64, 64)
    assert torch.equal(y["text"], x["text"]) and torch.equal(y["control"], x["control"])
    for mode, ref in before.items():
        assert torch.equal(again.predict_noise(**x, mode=mode), ref), mode


def test_loading_for_other_classes_is_refused(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "gen")
    other = ClassRegistry.from_records([{"id": 0, "name": "road", "color": [1, 2, 3]}])
    with pytest.raises(GeneratorError, match="other classes"):
        TISynthGenerator.from_pretrained(tmp_path / "gen", registry=other)


def test_control_channels_follow_the_registry(registry):
    three = ClassRegistry.from_records([{"id": i, "name": f"c{i}", "color": [i + 1, 0, 0]} for i in range(3)])
    m3 = build_generator({"preset": "tiny", **PAPER_PATH}, three)
    assert m3.control_channels == 3 and m3.mask_controlnet.config.conditioning_channels == 3
    authors = build_generator({"preset": "tiny", **PAPER_PATH, "control_encoding": "authors"}, registry)
    assert authors.control_channels == 3
    x = _batch(m3, 1, 64, 64)
    x["control"] = torch.zeros(1, registry.num_classes, 64, 64)
    with pytest.raises(GeneratorError, match=r"control image has 5 channels; this generator expects 3 \(3 classes"):
        m3.predict_noise(**x, mode="controlnet")


def test_configuration_errors_are_named(registry, tiny):
    with pytest.raises(GeneratorConfigError, match="unknown generator config key"):
        resolve_generator_config({"preset": "tiny", **PAPER_PATH, "unet_channels": 3})
    with pytest.raises(GeneratorConfigError, match="unknown generator preset"):
        resolve_generator_config({"preset": "huge"})
    with pytest.raises(GeneratorConfigError, match="mask_hint_channels"):
        build_generator({"preset": "tiny", **PAPER_PATH, "mask_hint_channels": [16, 32, 64, 128]}, registry)
    with pytest.raises(GeneratorConfigError, match="in_channels"):
        build_generator({"preset": "tiny", **PAPER_PATH, "unet": {"in_channels": 4}}, registry)
    with pytest.raises(AutoencoderError, match="not divisible"):
        tiny.check_image_size(66, 64)
    with pytest.raises(GeneratorError, match="needs Ref latents"):
        x = _batch(tiny, 1, 64, 64)
        tiny.predict_noise(x["sample"], x["timesteps"], x["text"], x["control"], None, mode="tisynth")


def test_presets_and_overrides(registry):
    tiny = resolve_generator_config({"preset": "tiny", **PAPER_PATH, "unet": {"layers_per_block": 2}})
    assert tiny["unet"]["layers_per_block"] == 2 and tiny["unet"]["block_out_channels"] == [64, 96, 96]
    assert tiny["scheduler"]["prediction_type"] == "v_prediction" and tiny["scheduler"]["beta_end"] == 0.012
    sd = resolve_generator_config({"preset": "sd15"})
    assert sd["unet"]["block_out_channels"] == [320, 640, 1280, 1280] and sd["text_encoder"]["hidden_size"] == 768
    assert sd["autoencoder"]["config"]["scaling_factor"] == 0.18215
    other_ae = resolve_generator_config({"preset": "small", "autoencoder": {"type": "taef2", "weights_dir": "x"}})
    assert other_ae["autoencoder"] == {"type": "taef2", "weights_dir": "x"}
    small = build_generator({"preset": "small", "image_size": 64}, registry)
    assert small.latent_channels == 48 and small.downsample_factor == 4
    with torch.no_grad():
        x = _batch(small, 1, 64, 64)
        assert small.predict_noise(**x).shape == (1, 48, 16, 16)


def test_builds_are_seeded(registry):
    a = build_generator({"preset": "tiny", **PAPER_PATH}, registry, seed=1)
    b = build_generator({"preset": "tiny", **PAPER_PATH}, registry, seed=1)
    c = build_generator({"preset": "tiny", **PAPER_PATH}, registry, seed=2)
    sa, sb, sc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_word_tokenizer_knows_template_and_class_words(tiny, tmp_path):
    tok = tiny.tokenizer
    ids = tok(["a satellite image of built-up water"], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert tok.unk_token_id not in ids and len(ids) == 77
    assert tok.convert_ids_to_tokens(ids[:8]) == ["[BOS]", "a", "satellite", "image", "of", "built", "-", "up"]
    assert tok(["zebra"]).input_ids[0][1] == tok.unk_token_id


def test_build_from_a_pretrained_base_folder(registry, tmp_path):
    """A diffusers-layout base (unet/vae/text_encoder/tokenizer/scheduler) is loaded, not rebuilt."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tisynth.generator.text import build_word_tokenizer, prompt_vocabulary

    base = tmp_path / "sd"
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        in_channels=4, out_channels=4, cross_attention_dim=32,
    )  # fmt: skip
    unet.save_pretrained(base / "unet")
    AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, norm_num_groups=4, layers_per_block=1, scaling_factor=0.3,
    ).save_pretrained(base / "vae")  # fmt: skip
    tok = build_word_tokenizer(prompt_vocabulary(registry, "a satellite image of {classes}"), 77)
    tok.save_pretrained(base / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(base / "text_encoder")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction").save_pretrained(base / "scheduler")

    model = build_generator({"preset": "sd15", "pretrained": str(base), "image_size": 32}, registry)
    assert model.autoencoder.kind == "kl" and model.autoencoder.scaling_factor == 0.3 and model.downsample_factor == 2
    assert model.prediction_type == "v_prediction"
    assert torch.equal(model.unet.conv_in.weight, unet.conv_in.weight)
    for cn in (model.mask_controlnet, model.ref_controlnet):  # ControlNets start as copies of the UNet encoder
        assert torch.equal(cn.down_blocks[0].resnets[0].conv1.weight, unet.down_blocks[0].resnets[0].conv1.weight)
    assert model.mask_controlnet.config.conditioning_embedding_out_channels == (16, 32)  # one stride-2 conv: factor 2
    with torch.no_grad():
        x = _batch(model, 2, 32, 32)
        assert model.predict_noise(**x).shape == (2, 4, 16, 16)
    model.save_pretrained(tmp_path / "gen")
    again = TISynthGenerator.from_pretrained(tmp_path / "gen")
    with torch.no_grad():
        assert torch.equal(again.predict_noise(**x), model.predict_noise(**x))


@pytest.mark.parametrize("zero_init", [True, False])
@torch.no_grad()
def test_mask_hint_init_keeps_the_model_unchanged_at_step_zero(registry, zero_init):
    model = build_generator({"preset": "tiny", **PAPER_PATH, "mask_hint_zero_init": zero_init}, registry, seed=0)
    hint_out = model.mask_controlnet.controlnet_cond_embedding.conv_out.weight
    assert bool((hint_out == 0).all()) == zero_init
    x = _batch(model, 2, 64, 64)
    # the ControlNet's output convs start at zero either way: control mode = the base at step 0
    assert torch.equal(model.predict_noise(**x, mode="controlnet"), model.predict_noise(**x, mode="base"))
    # with a non-zero hint conv the mask already reaches the ControlNet's features
    feats = {}
    for m in (0, 1):
        masks = torch.full((2, 64, 64), m, dtype=torch.uint8)
        feats[m] = model.mask_controlnet.controlnet_cond_embedding(model.encode_control(masks))
    assert torch.equal(feats[0], feats[1]) == zero_init


@pytest.mark.parametrize("zero_init", [True, False])
@torch.no_grad()
def test_ref_hint_init_decides_whether_the_ref_path_starts_first_order(registry, zero_init):
    model = build_generator({"preset": "tiny", "ref_hint_zero_init": zero_init}, registry, seed=0)
    assert bool((model.ref_controlnet.controlnet_cond_embedding.conv_out.weight == 0).all()) == zero_init
    x = _batch(model, 2, 64, 64)
    other = {**x, "ref_latents": torch.randn(x["ref_latents"].shape, generator=torch.Generator().manual_seed(5))}
    # AIA's output projections start at zero: the Ref changes nothing at step 0 either way
    assert torch.equal(model.predict_noise(**x), model.predict_noise(**other))
    # once they have moved (one optimiser step's worth), the Ref matters only if the hint encoder
    # already passes it on; with a zero hint conv it would first need a second, dependent step
    for layer in model.aia.values():
        for attn in layer.modules():
            if hasattr(attn, "to_out"):
                attn.to_out[0].weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.predict_noise(**x), model.predict_noise(**other)) == zero_init


def test_controlnets_restart_from_the_current_unet(registry):
    model = build_generator({"preset": "tiny", **PAPER_PATH}, registry, seed=0)
    hint_before = {n: p.clone() for n, p in model.mask_controlnet.controlnet_cond_embedding.named_parameters()}
    zero_before = [c.weight.clone() for c in model.ref_controlnet.controlnet_down_blocks]
    with torch.no_grad():  # as if the base stage had trained the UNet
        for p in model.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    assert not torch.equal(model.mask_controlnet.down_blocks[0].resnets[0].conv1.weight,
                           model.unet.down_blocks[0].resnets[0].conv1.weight)
    for which, cn in (("mask", model.mask_controlnet), ("ref", model.ref_controlnet)):
        model.controlnet_from_unet(which)
        for part in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
            ours, theirs = getattr(cn, part).state_dict(), getattr(model.unet, part).state_dict()
            assert all(torch.equal(ours[k], theirs[k]) for k in theirs), part
    # hint encoder and output convs keep their own initialisation (identity convs of the Ref one)
    assert all(torch.equal(p, hint_before[n]) for n, p in model.mask_controlnet.controlnet_cond_embedding.named_parameters())
    assert all(torch.equal(c.weight, w) for c, w in zip(model.ref_controlnet.controlnet_down_blocks, zero_before))
    with pytest.raises(GeneratorError, match="'mask' or 'ref'"):
        model.controlnet_from_unet("both")
