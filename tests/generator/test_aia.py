"""AIA: site mapping derived from the UNet, identity at initialisation, partial ControlNet runs."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel

from tisynth.generator import build_generator
from tisynth.generator.aia import MID, derive_aia_sites
from tisynth.generator.config import PRESETS
from tisynth.generator.model import run_controlnet

from .conftest import PAPER_PATH, perturb_zero_inits


def _inputs(model, b=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = model.num_classes
    masks = torch.randint(0, k, (b, size, size), generator=g).to(torch.uint8)
    images = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    z = model.encode_images(images)
    return {
        "sample": torch.randn(z.shape, generator=g),
        "timesteps": torch.randint(0, 1000, (b,), generator=g),
        "text": model.encode_prompts(["a satellite image of water forest"] * b),
        "control": model.encode_control(masks),
        "ref_latents": z,
    }


def test_sd15_site_mapping_matches_the_method_table():
    cfg = dict(PRESETS["sd15"]["unet"], in_channels=4, out_channels=4, cross_attention_dim=768)
    with init_empty_weights():
        unet = UNet2DConditionModel(**cfg)
    sites = {s.name: s for s in derive_aia_sites(unet)}
    # METHOD §2.4: decoder transformer j (ldm output block) uses ControlNet output 11 - j
    expected = {
        "mid_0": (MID, 1280, 1280),
        "up_1_0": (8, 1280, 1280), "up_1_1": (7, 1280, 1280), "up_1_2": (6, 1280, 640),
        "up_2_0": (5, 640, 640), "up_2_1": (4, 640, 640), "up_2_2": (3, 640, 320),
        "up_3_0": (2, 320, 320), "up_3_1": (1, 320, 320), "up_3_2": (0, 320, 320),
    }  # fmt: skip
    assert {n: (s.skip_index, s.dim, s.kv_dim) for n, s in sites.items()} == expected
    assert all(s.heads == 8 for s in sites.values())
    assert "mid_0" not in {s.name for s in derive_aia_sites(unet, include_mid=False)}


def test_mapping_is_derived_for_other_layouts():
    # two levels, 2 layers per block, attention everywhere: 3 + 3 skips, all consumed by attentions
    with init_empty_weights():
        unet = UNet2DConditionModel(
            block_out_channels=(16, 24),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=2,
            norm_num_groups=8,
            cross_attention_dim=8,
        )
    got = {s.name: (s.skip_index, s.dim, s.kv_dim) for s in derive_aia_sites(unet)}
    # skips: 0 conv_in(16), 1-2 resnets(16), 3 downsampler(16), 4-5 resnets(24)
    assert got == {
        "mid_0": (MID, 24, 24),
        "up_0_0": (5, 24, 24), "up_0_1": (4, 24, 24), "up_0_2": (3, 24, 16),
        "up_1_0": (2, 16, 16), "up_1_1": (1, 16, 16), "up_1_2": (0, 16, 16),
    }  # fmt: skip


@torch.no_grad()
@pytest.mark.parametrize("mask_residual", [False, True])
def test_aia_is_the_identity_at_initialisation(registry, mask_residual):
    """Compared: the UNet's prediction with both ControlNets producing NON-zero features that
    reach every AIA site, versus the same UNet without AIA: called with no features and no
    residuals (the paper's injection), or with the mask ControlNet's residuals only, i.e. the
    stage-A ControlNet model (``mask_residual``)."""
    tiny = build_generator({"preset": "tiny", **PAPER_PATH, "mask_residual": mask_residual}, registry, seed=0)
    perturb_zero_inits(tiny.mask_controlnet)  # non-zero mask features (like after stage A)
    perturb_zero_inits(tiny.ref_controlnet)
    x = _inputs(tiny)
    feats = tiny.aia_features(x["sample"], x["timesteps"], x["text"], x["control"], x["ref_latents"])
    assert set(feats) == {s.name for s in tiny.sites}
    assert all(r.abs().sum() > 0 and m.abs().sum() > 0 for r, m in feats.values())
    with_aia = tiny.predict_noise(**x, mode="tisynth")
    tiny.clear_features()
    if mask_residual:
        plain = tiny.predict_noise(**{k: v for k, v in x.items() if k != "ref_latents"}, mode="controlnet")
        unconditioned = tiny.unet(x["sample"], x["timesteps"], x["text"]).sample
        assert not torch.allclose(plain, unconditioned, atol=1e-4)  # the residual path does something
    else:
        plain = tiny.unet(x["sample"], x["timesteps"], x["text"]).sample
    assert torch.allclose(with_aia, plain, atol=1e-6, rtol=0)
    # the comparison can fail: once an AIA output projection is non-zero the output changes
    torch.nn.init.normal_(tiny.aia["up_2_1"].ref_attn.to_out[0].weight, std=0.1)
    assert not torch.allclose(tiny.predict_noise(**x, mode="tisynth"), plain, atol=1e-4)


@torch.no_grad()
def test_partial_controlnet_run_equals_the_full_forward(tiny):
    perturb_zero_inits(tiny.ref_controlnet)
    x = _inputs(tiny)
    cn = tiny.ref_controlnet
    down, mid = cn(x["sample"], x["timesteps"], x["text"], x["ref_latents"], return_dict=False)
    for needed, need_mid in (([0, 1, 2, 3], True), ([1, 3], False), ([0], False), ([5], True)):
        outs, m = run_controlnet(cn, x["sample"], x["timesteps"], x["text"], x["ref_latents"], needed, need_mid)
        assert sorted(outs) == sorted(needed)
        for i in needed:
            assert torch.allclose(outs[i], down[i], atol=1e-6, rtol=0), i
        assert (m is not None) == need_mid
        if need_mid:
            assert torch.allclose(m, mid, atol=1e-6, rtol=0)


def _call_counts(model, names):
    counts = dict.fromkeys(names, 0)
    handles = []
    for name in names:
        module = model.get_submodule(name)

        def hook(*_, _n=name):
            counts[_n] += 1

        handles.append(module.register_forward_hook(hook))
    return counts, handles


@pytest.mark.parametrize("train_mid", [True, False])
@pytest.mark.parametrize("mask_residual", [False, True])
@torch.no_grad()
def test_unconsumed_controlnet_outputs_are_not_computed(registry, train_mid, mask_residual):
    model = build_generator({"preset": "tiny", **PAPER_PATH, "train_mid_aia": train_mid, "mask_residual": mask_residual}, registry)
    # tiny layout: skips 0 conv_in, 1 d0.resnet, 2 d0.down, 3 d1.resnet, 4 d1.down, 5 d2.resnet;
    # decoder attentions consume 0..3, the middle site (if any) mid_block_res_sample
    assert model.needed_skips == [0, 1, 2, 3] and model.need_mid == train_mid
    watched = []
    for cn in ("ref_controlnet", "mask_controlnet"):
        watched += [f"{cn}.controlnet_down_blocks.4", f"{cn}.controlnet_down_blocks.5", f"{cn}.mid_block",
                    f"{cn}.controlnet_mid_block", f"{cn}.down_blocks.2.resnets.0", f"{cn}.down_blocks.1.downsamplers.0",
                    f"{cn}.controlnet_down_blocks.3"]  # fmt: skip
    counts, handles = _call_counts(model, watched)
    model.predict_noise(**_inputs(model), mode="tisynth")
    for h in handles:
        h.remove()
    for cn in ("ref_controlnet", "mask_controlnet"):
        everything = cn == "mask_controlnet" and mask_residual  # residuals consume every output
        assert counts[f"{cn}.controlnet_down_blocks.3"] == 1
        assert counts[f"{cn}.controlnet_down_blocks.4"] == counts[f"{cn}.controlnet_down_blocks.5"] == int(everything)
        deep = (f"{cn}.mid_block", f"{cn}.controlnet_mid_block", f"{cn}.down_blocks.2.resnets.0", f"{cn}.down_blocks.1.downsamplers.0")
        assert all(counts[n] == (1 if train_mid or everything else 0) for n in deep), counts


def test_sd15_preset_has_the_paper_sizes(registry):
    with init_empty_weights():  # shapes only, no memory
        model = build_generator({"preset": "sd15"}, registry)
    counts = {k: round(v / 1e6, 1) for k, v in model.parameter_counts().items()}
    # SD 1.5 UNet 859.5 M, ControlNet 361.3 M, CLIP ViT-L/14 text 123.1 M, KL-f8 VAE 83.7 M;
    # METHOD §2.5: about 60.7 M new AIA parameters over the 10 sites
    assert counts == {"unet": 859.5, "mask_controlnet": 361.3, "ref_controlnet": 361.3, "aia": 60.7, "text_encoder": 123.1, "autoencoder": 83.7}
    assert model.needed_skips == list(range(9)) and model.need_mid  # outputs 9-11 are never computed
    assert model.downsample_factor == 8 and model.latent_channels == 4
