"""The mask-first base (SPADE / concat), condition dropout and guidance, zero terminal SNR, EMA,
and the latent cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDPMScheduler

from tisynth.classes import IGNORE_INDEX
from tisynth.generator import build_generator, sample_images, train_generator
from tisynth.generator.autoencoders import SpaceToDepthAutoencoder
from tisynth.generator.latent_cache import (
    LatentCacheError,
    LatentTileDataset,
    build_latent_cache,
    dihedral,
)
from tisynth.generator.mask_cond import mask_map
from tisynth.generator.model import GeneratorError
from tisynth.generator.train import EmaWeights, TrainConfig, _prepare_inputs, latent_ref
from tisynth.io import TileSet, write_image

FAST = {"batch_size": 4, "learning_rate": 1e-3, "progress": False, "checkpoint_every": 0, "weight_decay": 0.0}


def _inputs(model, tiles, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.from_numpy(np.stack([t["mask"] for t in tiles[:n]]))
    latents = torch.randn(n, model.latent_channels, 16, 16, generator=g)
    text = model.encode_prompts([t["prompt"] for t in tiles[:n]])
    return latents, masks, text


@pytest.mark.parametrize("kind", ["spade", "concat"])
def test_fresh_mask_first_base_depends_on_the_mask_and_gets_gradient(registry, tiles, kind):
    model = build_generator({"preset": "tiny", "mask_conditioning": kind}, registry, seed=0)
    assert model.mask_first and len(model.mask_cond) > 0
    if kind == "spade":  # every ResBlock norm of the UNet is modulated
        from diffusers.models.resnet import ResnetBlock2D

        assert len(model.mask_cond) == 2 * sum(isinstance(m, ResnetBlock2D) for m in model.unet.modules())
    x, masks, text = _inputs(model, tiles)
    t = torch.full((4,), 500)
    out = model.predict_noise(x, t, text, model.encode_control(masks), mode="base")
    other = model.predict_noise(x, t, text, model.encode_control(masks.roll(1, 0)), mode="base")
    assert (out - other).abs().max() > 1e-4  # a changed mask changes the output of a fresh model
    dropped = model.predict_noise(x, t, text, model.encode_control(masks), mode="base", cond_keep=torch.zeros(4, dtype=torch.bool))
    assert (out - dropped).abs().max() > 1e-4
    # step 0: the modulation nets receive gradient
    model.set_trainable("base")
    loss = model.predict_noise(x, t, text, model.encode_control(masks), mode="base").pow(2).mean()
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("mask_cond.")]
    assert grads and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_mask_first_base_needs_masks(registry, tiles):
    model = build_generator({"preset": "tiny"}, registry, seed=0)
    x, _, text = _inputs(model, tiles)
    with pytest.raises(GeneratorError, match="control image"):
        model.predict_noise(x, torch.full((4,), 10), text, None, mode="base")


def test_mask_map_has_an_ignore_channel_and_a_distinct_dropped_state():
    m = torch.tensor([[[0, 1], [IGNORE_INDEX, 2]]], dtype=torch.uint8)
    out = mask_map(m, 3)
    assert out.shape == (1, 4, 2, 2)
    assert out[0, 3, 1, 0] == 1 and out[0, :3, 1, 0].sum() == 0  # ignore is its own channel
    assert torch.all(out.sum(1) == 1)
    assert mask_map(m, 3, keep=torch.tensor([False])).abs().sum() == 0


def test_from_scratch_presets_have_zero_terminal_snr(registry):
    model = build_generator({"preset": "tiny"}, registry, seed=0)
    sched = DDPMScheduler.from_config(model.scheduler_config)
    assert float(sched.alphas_cumprod[-1]) < 1e-6
    assert model.prediction_type == "v_prediction"
    sd = build_generator({"preset": "tiny", "scheduler": {"rescale_betas_zero_snr": False}}, registry, seed=0)
    assert float(DDPMScheduler.from_config(sd.scheduler_config).alphas_cumprod[-1]) > 1e-3


def test_condition_and_ref_dropout_rates_hold(registry, tiles):
    model = build_generator({"preset": "tiny"}, registry, seed=0)
    n = 400
    batch = {
        "latents": torch.zeros(n, model.latent_channels, 16, 16),
        "variants": torch.randn(n, 2, model.latent_channels, 16, 16),
        "variant_index": torch.zeros(n, dtype=torch.long),
        "masks": torch.from_numpy(np.stack([tiles[i % len(tiles)]["mask"] for i in range(n)])),
        "prompts": [tiles[i % len(tiles)]["prompt"] for i in range(n)],
    }
    cfg = TrainConfig.from_dict({"stage": "B", "condition_dropout": 0.15, "ref_dropout": 0.1, "progress": False})
    kept, ref_zero = [], []
    for seed in range(5):
        out = _prepare_inputs(model, batch, cfg, None, torch.Generator().manual_seed(seed), torch.device("cpu"), 1000)
        kept.append(out["cond_keep"].float().mean().item())
        ref_zero.append((out["ref_latents"].flatten(1).abs().sum(1) == 0).float().mean().item())
    assert abs(1 - np.mean(kept) - 0.15) < 0.03
    assert abs(np.mean(ref_zero) - 0.1) < 0.03
    # dropped items also lose their prompt: their text embedding is the empty prompt's
    out = _prepare_inputs(model, batch, cfg, None, torch.Generator().manual_seed(0), torch.device("cpu"), 1000)
    empty = model.encode_prompts([""])[0]
    i = int(torch.nonzero(~out["cond_keep"])[0])
    assert torch.allclose(out["text"][i], empty)


def test_latent_ref_is_another_orientation_and_crop():
    g = torch.Generator().manual_seed(0)
    variants = torch.arange(2 * 8 * 1 * 4 * 4, dtype=torch.float32).view(2, 8, 1, 4, 4)
    ref = latent_ref(variants, torch.tensor([3, 0]), (1.0, 1.0), g)  # no crop: a whole other variant
    for i, cur in enumerate((3, 0)):
        matches = [j for j in range(8) if torch.equal(ref[i], variants[i, j])]
        assert matches and cur not in matches
    cropped = latent_ref(variants, torch.tensor([0, 0]), (0.5, 0.5), g)
    assert cropped.shape == (2, 1, 4, 4)


def test_ema_trails_the_live_weights():
    p = {"w": torch.zeros(3)}
    ema = EmaWeights(p, decay=0.9)
    for _ in range(50):
        p["w"] += 1.0
        ema.update(p)
    assert torch.all(ema.shadow["w"] < p["w"]) and torch.all(ema.shadow["w"] > 40)
    state = ema.state_dict()
    other = EmaWeights({"w": torch.zeros(3)}, decay=0.9)
    other.load_state_dict(state)
    assert torch.equal(other.shadow["w"], ema.shadow["w"]) and other.updates == 50


def test_training_with_ema_puts_the_average_into_the_model(registry, tiles, tmp_path):
    torch.manual_seed(0)
    model = build_generator({"preset": "tiny"}, registry, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("mask_cond.")}
    cfg = {**FAST, "stage": "base", "steps": 4, "ema_decay": 0.5, "checkpoint_every": 4, "condition_dropout": 0.2}
    train_generator(model, tiles, cfg, tmp_path / "ckpt")
    from safetensors.torch import load_file

    live = load_file(str(next((tmp_path / "ckpt").glob("step-*")) / "trainable.safetensors"))
    name = next(iter(before))
    now = dict(model.named_parameters())[name].detach()
    assert not torch.equal(now, before[name])  # trained
    assert not torch.equal(now, live[name])  # the model holds the EMA, not the live weights


def test_sampling_guidance_on_mask_and_prompt(registry, tiles):
    model = build_generator({"preset": "tiny"}, registry, seed=0)
    masks = np.stack([t["mask"] for t in tiles[:2]])
    refs = np.stack([t["image"] for t in tiles[:2]])
    prompts = [t["prompt"] for t in tiles[:2]]
    cfg = {"steps": 3, "timestep_spacing": "trailing", "mode": "base"}
    plain = sample_images(model, masks, refs, prompts, [0, 1], {**cfg, "guidance_scale": 1.0})
    guided = sample_images(model, masks, refs, prompts, [0, 1], {**cfg, "guidance_scale": 3.0, "uncond": "mask_prompt"})
    prompt_only = sample_images(model, masks, refs, prompts, [0, 1], {**cfg, "guidance_scale": 3.0, "uncond": "prompt"})
    assert plain.shape == guided.shape == (2, 64, 64, 3)
    assert not np.array_equal(plain, guided) and not np.array_equal(guided, prompt_only)
    full = sample_images(model, masks, refs, prompts, [0, 1], {**cfg, "mode": "tisynth", "guidance_scale": 2.0, "uncond": "mask_prompt"})
    assert full.shape == (2, 64, 64, 3)


# ---------------------------------------------------------------------- latent cache
def _tileset(tmp_path, tiles):
    rows = []
    for i, t in enumerate(tiles):
        write_image(tmp_path / "images" / f"t{i}.png", t["image"])
        write_image(tmp_path / "masks" / f"t{i}.png", t["mask"])
        rows.append({"name": f"t{i}", "split": "train", "image": f"images/t{i}.png", "mask": f"masks/t{i}.png", "prompt": t["prompt"]})
    return TileSet(tmp_path), pd.DataFrame(rows)


def test_latent_cache_round_trips_and_resumes(tiles, tmp_path):
    tileset, manifest = _tileset(tmp_path / "tiles", tiles[:3])
    ae = SpaceToDepthAutoencoder(factor=4, scale=2.0)  # exactly invertible: decode(encode(x)) == x
    cache = build_latent_cache(ae, tileset, manifest, tmp_path / "cache", variants=8, dtype="float32", progress=False)
    assert cache["encoded_now"] == 3 and cache["variants"] == 8
    data = LatentTileDataset(cache, tileset, manifest)
    assert len(data) == 24
    item = data[8 * 1 + 5]  # tile 1, variant 5
    image = torch.from_numpy(tiles[1]["image"]).permute(2, 0, 1).float()[None] / 127.5 - 1
    assert torch.allclose(ae.decode(item["latent"][None]), dihedral(image, 5), atol=1e-5)
    assert np.array_equal(item["mask"], dihedral(tiles[1]["mask"], 5))
    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = build_latent_cache(ae, tileset, manifest, tmp_path / "cache", variants=8, dtype="float32", progress=False)
    assert again["encoded_now"] == 0 and [f.stat().st_mtime_ns for f in files] == stamps
    # a tile rewritten under its name (ingested again) is encoded again; the others are kept
    write_image(tileset.root / "images" / "t1.png", tiles[2]["image"])
    third = build_latent_cache(ae, tileset, manifest, tmp_path / "cache", variants=8, dtype="float32", progress=False)
    assert third["encoded_now"] == 1
    image = torch.from_numpy(tiles[2]["image"]).permute(2, 0, 1).float()[None] / 127.5 - 1
    assert torch.allclose(ae.decode(LatentTileDataset(third, tileset, manifest)[8]["latent"][None]), image, atol=1e-5)
    # latents with no record (an earlier version kept none) are taken as they are
    shutil.rmtree(Path(third["folder"]) / "sources")
    assert build_latent_cache(ae, tileset, manifest, tmp_path / "cache", variants=8, dtype="float32",
                              progress=False)["encoded_now"] == 0
    assert len(list((Path(third["folder"]) / "sources").iterdir())) == 3


def test_latent_cache_is_invalidated_by_another_autoencoder(tiles, tmp_path):
    tileset, manifest = _tileset(tmp_path / "tiles", tiles[:2])
    a = build_latent_cache(SpaceToDepthAutoencoder(4, 2.0), tileset, manifest, tmp_path / "c", variants=1, progress=False)
    b = build_latent_cache(SpaceToDepthAutoencoder(4, 1.0), tileset, manifest, tmp_path / "c", variants=1, progress=False)
    assert a["folder"] != b["folder"] and b["encoded_now"] == 2  # a new folder; the old one is kept
    assert Path(a["folder"]).is_dir() and Path(a["folder"]).parent == tmp_path / "c"
    two = build_latent_cache(SpaceToDepthAutoencoder(4, 2.0), tileset, manifest, tmp_path / "c", variants=2, progress=False)
    assert two["folder"] != a["folder"] and two["encoded_now"] == 2  # another variant count: its own folder
    assert len(list(Path(a["folder"]).rglob("*.safetensors"))) == 2
    meta = Path(a["folder"]) / "cache.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "variants": 8}))
    with pytest.raises(LatentCacheError, match="another cache"):
        build_latent_cache(SpaceToDepthAutoencoder(4, 2.0), tileset, manifest, tmp_path / "c", variants=1, progress=False)


def test_training_on_cached_latents(registry, tiles, tmp_path):
    tileset, manifest = _tileset(tmp_path / "tiles", tiles[:4])
    model = build_generator({"preset": "tiny"}, registry, seed=0)
    cache = build_latent_cache(model.autoencoder, tileset, manifest, tmp_path / "cache", progress=False)
    data = LatentTileDataset(cache, tileset, manifest)
    _, hist = train_generator(model, data, {**FAST, "stage": "base", "steps": 2}, tmp_path / "base")
    _, hist_b = train_generator(model, data, {**FAST, "stage": "B", "steps": 2, "sample_every": 2}, tmp_path / "b")
    assert len(hist) == 2 and len(hist_b) == 2 and all(np.isfinite(h["loss"]) for h in hist + hist_b)


def test_latent_cache_with_two_variants_pairs_each_latent_with_its_mask(tiles, tmp_path):
    tileset, manifest = _tileset(tmp_path / "tiles", tiles[:2])
    ae = SpaceToDepthAutoencoder(factor=4, scale=2.0)
    cache = build_latent_cache(ae, tileset, manifest, tmp_path / "cache", variants=2, dtype="float32", progress=False)
    data = LatentTileDataset(cache, tileset, manifest)
    assert len(data) == 4
    flipped = data[1]  # tile 0, variant 1 = the horizontal flip (dihedral 4)
    image = torch.from_numpy(tiles[0]["image"]).permute(2, 0, 1).float()[None] / 127.5 - 1
    assert torch.allclose(ae.decode(flipped["latent"][None]), image.flip(-1), atol=1e-5)
    assert np.array_equal(flipped["mask"], tiles[0]["mask"][:, ::-1])
    with pytest.raises(LatentCacheError, match="variants"):
        build_latent_cache(ae, tileset, manifest, tmp_path / "c2", variants=3, progress=False)
