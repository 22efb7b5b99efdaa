"""Training in which the look is only knowable from the Ref: random styles, style pairs of different
tiles, mask-free tiles (a target domain's) whose masks are never read, the global style path, and
the Ref-steering report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tisynth.classes import IGNORE_INDEX
from tisynth.generator import build_generator, train_generator
from tisynth.generator.autoencoders import SpaceToDepthAutoencoder
from tisynth.generator.data import collate_items, uint8_to_images
from tisynth.generator.latent_cache import LatentCacheError, PairedLatentDataset, build_latent_cache, build_style_cache
from tisynth.generator.model import TISynthGenerator
from tisynth.generator.steering import (
    SteeringError,
    SteeringSettings,
    choose_inputs,
    colour_transfer,
    ref_steering,
    split_groups,
    steering_figure,
)
from tisynth.styles import Style, StyleError, StyleFamily, apply_style, style_sets
from tisynth.generator.augment import RefAugment
from tisynth.generator.train import TrainConfig, _prepare_inputs
from tisynth.io import TileSet, write_image

FAST = {"batch_size": 4, "learning_rate": 1e-3, "progress": False, "checkpoint_every": 0, "weight_decay": 0.0}


def _tileset(root, tiles, groups=None, masks=True, split="train"):
    rows = []
    for i, t in enumerate(tiles):
        write_image(root / "images" / f"t{i}.png", t["image"])
        if masks:
            write_image(root / "masks" / f"t{i}.png", t["mask"])
        rows.append({"name": f"t{i}", "split": split, "image": f"images/t{i}.png", "mask": f"masks/t{i}.png" if masks else None,
                     "prompt": t["prompt"] if masks else None, "group": (groups[i] if groups else "g")})
    return TileSet(root), pd.DataFrame(rows)


def _decode(ae, latent):
    return ((ae.decode(latent[None])[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


# ---------------------------------------------------------------------- styles
def test_identity_style_leaves_an_image_unchanged_and_a_drawn_style_is_seeded(tiles):
    image = tiles[0]["image"]
    assert np.array_equal(apply_style(image, Style()), image)
    family = StyleFamily()
    a, b = family.draw(7), family.draw(7)
    assert a == b and family.draw(8) != a
    styled = apply_style(image, a, "t0")
    assert styled.shape == image.shape and styled.dtype == np.uint8
    assert np.array_equal(styled, apply_style(image, a, "t0"))  # noise seeded by style and name
    assert np.abs(styled.astype(int) - image.astype(int)).mean() > 2  # a real change of look
    # every drawn value lies in its range
    for seed in range(20):
        s = family.draw(seed)
        assert all(0.75 <= g <= 1.3 for g in s.gain) and 0.7 <= s.gamma <= 1.5 and 0 <= s.haze <= 0.3


def test_a_gain_style_scales_the_band_means():
    image = np.full((16, 16, 3), 100, np.uint8)
    out = apply_style(image, Style(gain=(1.2, 1.0, 0.5)))
    assert out[..., 0].mean() == 120 and out[..., 1].mean() == 100 and out[..., 2].mean() == 50


@pytest.mark.parametrize("bad, key", [({"gamma": [1.5, 0.7]}, "gamma"), ({"haze": [0.0]}, "haze"),
                                      ({"gain": [-1.0, 1.0]}, "gain"), ({"blur": ["a", 1]}, "blur"),
                                      ({"tint": [0, 1]}, "tint")])
def test_an_invalid_style_range_is_refused_with_its_key(bad, key):
    with pytest.raises(StyleError, match=key):
        StyleFamily.from_dict(bad)


def test_style_sets_partition_within_groups():
    names = [f"n{i}" for i in range(11)]
    groups = ["a"] * 7 + ["b"] * 3 + ["c"]
    sets = style_sets(names, groups, 3, seed=1)
    flat = [n for s in sets for n in s]
    assert sorted(flat) == sorted(names) and len(flat) == len(set(flat))
    assert all(len(s) >= 2 for s in sets)
    group_of = dict(zip(names, groups))
    # the lone tile of group c was merged with the smallest other group; the rest stay within their group
    assert sum(len({group_of[n] for n in s}) > 1 for s in sets) <= 1
    assert style_sets(names, groups, 3, seed=1) == sets
    with pytest.raises(StyleError, match="set_size"):
        style_sets(names, groups, 1, seed=1)


# ---------------------------------------------------------------------- the style cache and items
def test_style_pairs_share_a_style_and_take_another_tile_as_ref(tiles, tmp_path):
    tileset, manifest = _tileset(tmp_path / "tiles", tiles[:6], groups=["a", "a", "a", "b", "b", "b"])
    ae = SpaceToDepthAutoencoder(factor=4, scale=2.0)  # exactly invertible
    cache = build_latent_cache(ae, tileset, manifest, tmp_path / "cache", variants=1, dtype="float32", progress=False)
    styles = build_style_cache(ae, tileset, manifest, cache, {}, k=2, set_size=3, seed=0, progress=False)
    assert styles["encoded_now"] == 6
    data = PairedLatentDataset(cache, tileset, manifest, styles=styles)
    assert len(data) == 6 + 6 * 2 and data.n_styled == 12
    meta = json.loads((Path(styles["folder"]) / "styles.json").read_text())
    for r in range(2):
        for members in meta["sets"][r]:
            assert len({manifest.set_index("name").loc[m, "group"] for m in members}) == 1  # within a scene group
    for index in range(6, 18):
        item = data[index]
        tile, r = divmod(index - 6, 2)
        name = data.names[tile]
        members = next(s for s in meta["sets"][r] if name in s)
        style = Style.from_dict(meta["styles"][r][meta["sets"][r].index(members)])
        assert np.array_equal(_decode(ae, item["latent"]), apply_style(tiles[tile]["image"], style, name))
        # the Ref is another tile of the set, rendered in the same style
        refs = [m for m in members if m != name]
        decoded = _decode(ae, item["ref_latent"])
        assert any(np.array_equal(decoded, apply_style(tiles[int(m[1:])]["image"], style, m)) for m in refs)
        assert item["cond_keep"] and np.array_equal(item["mask"], tiles[tile]["mask"])
    # plain items: the source look, and still another tile as the Ref
    plain = data[0]
    assert not np.array_equal(_decode(ae, plain["ref_latent"]), tiles[0]["image"])
    again = build_style_cache(ae, tileset, manifest, cache, {}, k=2, set_size=3, seed=0, progress=False)
    assert again["encoded_now"] == 0 and again["folder"] == styles["folder"]
    other = build_style_cache(ae, tileset, manifest, cache, {"gamma": [1.0, 1.1]}, k=2, set_size=3, seed=0, progress=False)
    assert other["folder"] != styles["folder"] and other["encoded_now"] == 6  # other settings: another folder
    with pytest.raises(LatentCacheError, match="k must be"):
        build_style_cache(ae, tileset, manifest, cache, {}, k=0, progress=False)
    batch = collate_items([data[i] for i in (0, 7, 8, 12)])
    assert batch["ref_latents"].shape == batch["latents"].shape and bool(batch["cond_keep"].all())


def test_mask_free_tiles_never_read_their_masks_and_train_the_same_model(registry, tiles, tmp_path, monkeypatch):
    source, manifest = _tileset(tmp_path / "src", tiles[:4])
    model = build_generator({"preset": "tiny"}, registry, seed=0)
    cache = build_latent_cache(model.autoencoder, source, manifest, tmp_path / "cache", variants=1, progress=False)
    histories, weights = [], []
    for case in ("garbage", "none"):
        root = tmp_path / f"target_{case}"
        target, tmanifest = _tileset(root, tiles[4:8], masks=False)
        if case == "garbage":  # masks that are not even images, and a manifest that points at them
            (root / "masks").mkdir(parents=True)
            for i in range(4):
                (root / "masks" / f"t{i}.png").write_bytes(b"not a mask")
            tmanifest["mask"] = [f"masks/t{i}.png" for i in range(4)]
            tmanifest["prompt"] = ["garbage"] * 4

        def refuse(*_a, **_k):
            raise AssertionError("a target mask was read")

        monkeypatch.setattr(target, "read_mask", refuse)
        tcache = build_latent_cache(model.autoencoder, target, tmanifest, tmp_path / f"tc_{case}", variants=1, progress=False,
                                    require_masks=False)
        data = PairedLatentDataset(cache, source, manifest, unlabeled=[{"cache": tcache, "repeat": 2}])
        assert len(data) == 4 + 8
        item = data[4 + 5]
        assert item["cond_keep"] is False and item["prompt"] == "" and bool((item["mask"] == IGNORE_INDEX).all())
        assert not torch.equal(item["ref_latent"], item["latent"])  # another target tile
        m = build_generator({"preset": "tiny"}, registry, seed=0)
        _, hist = train_generator(m, data, {**FAST, "stage": "B", "steps": 3, "seed": 3}, tmp_path / f"b_{case}")
        histories.append([h["loss"] for h in hist])
        weights.append({n: p.detach().clone() for n, p in m.named_parameters() if n.startswith(("aia.", "ref_controlnet."))})
    assert histories[0] == histories[1]
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])


def test_mask_free_items_drop_mask_and_prompt_in_training(registry, tiles, tmp_path):
    source, manifest = _tileset(tmp_path / "src", tiles[:2])
    target, tmanifest = _tileset(tmp_path / "tgt", tiles[2:4], masks=False)
    model = build_generator({"preset": "tiny"}, registry, seed=0)
    cache = build_latent_cache(model.autoencoder, source, manifest, tmp_path / "cache", variants=1, progress=False)
    tcache = build_latent_cache(model.autoencoder, target, tmanifest, tmp_path / "tc", variants=1, progress=False,
                                require_masks=False)
    data = PairedLatentDataset(cache, source, manifest, unlabeled=[{"cache": tcache}])
    batch = collate_items([data[i] for i in range(4)])
    cfg = TrainConfig.from_dict({"stage": "B", "condition_dropout": 0.0, "ref_dropout": 0.0})
    inputs = _prepare_inputs(model, batch, cfg, RefAugment(), torch.Generator().manual_seed(0), torch.device("cpu"), 1000)
    assert inputs["cond_keep"].tolist() == [True, True, False, False]
    assert inputs["ref_latents"].shape == inputs["latents"].shape
    with pytest.raises(LatentCacheError, match="at least two"):
        one = build_latent_cache(model.autoencoder, target, tmanifest.head(1), tmp_path / "tc1", variants=1, progress=False,
                                 require_masks=False)
        PairedLatentDataset(cache, source, manifest, unlabeled=[{"cache": one}])


# ---------------------------------------------------------------------- the global style path
def test_global_style_path_starts_as_identity_trains_in_stage_b_and_round_trips(registry, tiles, tmp_path):
    plain = build_generator({"preset": "tiny"}, registry, seed=0)
    styled = build_generator({"preset": "tiny", "style_conditioning": "global"}, registry, seed=0)
    assert plain.style_cond is None and styled.style_cond is not None
    names = styled.trainable_parameter_names("B")
    assert any(n.startswith("style_cond.") for n in names)
    # style-first: the base trains the path from its first step, as a mask-first base trains the mask's
    assert styled.style_first and not plain.style_first
    assert any(n.startswith("style_cond.") for n in styled.trainable_parameter_names("base"))
    masks = torch.from_numpy(np.stack([t["mask"] for t in tiles[:2]]))
    x = torch.randn(2, plain.latent_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    text = plain.encode_prompts([t["prompt"] for t in tiles[:2]])
    ref = plain.encode_images(uint8_to_images(np.stack([t["image"] for t in tiles[2:4]])))
    t = torch.full((2,), 500)
    with torch.no_grad():
        a = plain.predict_noise(x, t, text, plain.encode_control(masks), ref)
        b = styled.predict_noise(x, t, text, styled.encode_control(masks), ref)
        assert torch.allclose(a, b, atol=1e-6)  # zero-initialised heads: the paper's model
        for head in styled.style_cond.heads.values():
            torch.nn.init.normal_(head.weight, std=0.05)
        c = styled.predict_noise(x, t, text, styled.encode_control(masks), ref)
        d = styled.predict_noise(x, t, text, styled.encode_control(masks), ref.flip(0) * 1.5 + 0.3)
        assert (c - d).abs().max() > 1e-4  # another Ref's statistics change the prediction
        # the base alone (mode base: no ControlNet, no AIA) takes the Ref's look through the path; no Ref = the dropped Ref
        e = styled.predict_noise(x, t, text, styled.encode_control(masks), ref, mode="base")
        f = styled.predict_noise(x, t, text, styled.encode_control(masks), ref.flip(0) * 1.5 + 0.3, mode="base")
        assert (e - f).abs().max() > 1e-4
        none = styled.predict_noise(x, t, text, styled.encode_control(masks), None, mode="base")
        zero = styled.predict_noise(x, t, text, styled.encode_control(masks), torch.zeros_like(ref), mode="base")
        assert torch.equal(none, zero)
    styled.save_pretrained(tmp_path / "g")
    back = TISynthGenerator.from_pretrained(tmp_path / "g")
    with torch.no_grad():
        assert torch.allclose(back.predict_noise(x, t, text, back.encode_control(masks), ref), c, atol=1e-6)
    (tmp_path / "g" / "style_cond" / "style_cond.safetensors").unlink()
    with pytest.raises(Exception, match="style path"):
        TISynthGenerator.from_pretrained(tmp_path / "g")


# ---------------------------------------------------------------------- the steering report
def test_colour_transfer_is_the_share_of_the_real_shift():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 200, (4, 8, 8, 3)).astype(np.uint8)
    tgt = np.clip(src.astype(int) + 40, 0, 255).astype(np.uint8)
    assert colour_transfer(src, tgt, src, tgt)["colour_transfer"] == pytest.approx(1.0)
    assert colour_transfer(src, src, src, tgt)["colour_transfer"] == pytest.approx(0.0)
    half = np.clip(src.astype(int) + 20, 0, 255).astype(np.uint8)
    assert colour_transfer(src, half, src, tgt)["colour_transfer"] == pytest.approx(0.5, abs=0.01)
    assert colour_transfer(tgt, src, src, tgt)["colour_transfer"] == pytest.approx(-1.0)
    with pytest.raises(SteeringError, match="no shift"):
        colour_transfer(src, tgt, src, src)


def test_split_groups_is_disjoint_and_balanced():
    manifest = pd.DataFrame({"name": [f"n{i}" for i in range(10)], "group": list("aaaabbbccd"), "source": ["s"] * 10})
    a, b = split_groups(manifest)
    assert set(a).isdisjoint(b) and set(a) | set(b) == set("abcd")
    with pytest.raises(SteeringError, match="one group"):
        split_groups(manifest.assign(group="a", source="s"))


def test_ref_steering_report_with_and_without_a_target(registry, tiles, tmp_path):
    more = tiles + [dict(t, image=np.clip(t["image"].astype(int) + 60, 0, 255).astype(np.uint8)) for t in tiles]
    source, manifest = _tileset(tmp_path / "src", more[:8], groups=list("aaaabbbb"))
    manifest.loc[[1, 5], "split"] = "val"
    target, tmanifest = _tileset(tmp_path / "tgt", more[8:], masks=False)
    model = build_generator({"preset": "tiny"}, registry, seed=0)
    cfg = SteeringSettings.from_params({"masks": 2, "seed_items": 1, "real_tiles": 4, "kid": False})
    sampler = {"steps": 2, "guidance_scale": 1.0}
    inputs = choose_inputs(source, manifest, target, tmanifest, cfg)
    assert inputs.target_label == "target" and len(inputs.names) == 2
    metrics, images = ref_steering(model, inputs, cfg, sampler)
    for key in ("ref_effect", "seed_effect", "ref_over_seed", "colour_transfer", "real_shift_norm"):
        assert np.isfinite(metrics[key])
    assert metrics["real_shift_mean_r"] > 30  # the target tiles are brighter by construction
    assert images["source"].shape == images["target"].shape == (2, 64, 64, 3)
    fig = steering_figure(model, inputs, images, metrics, rows=2)
    assert len(fig.axes) == 10
    # without a target: two disjoint halves of the scene groups
    inputs2 = choose_inputs(source, manifest, None, None, cfg)
    assert "groups" in inputs2.source_label and inputs2.source_label != inputs2.target_label
    with pytest.raises(SteeringError, match="seed_items"):
        SteeringSettings.from_params({"masks": 2, "seed_items": 3})
    with pytest.raises(SteeringError, match="unknown"):
        SteeringSettings.from_params({"maskz": 2})


def test_a_style_first_base_trains_on_style_pairs_with_its_ref(registry, tiles, tmp_path):
    source, manifest = _tileset(tmp_path / "src", tiles[:6])
    model = build_generator({"preset": "tiny", "style_conditioning": "global"}, registry, seed=0)
    cache = build_latent_cache(model.autoencoder, source, manifest, tmp_path / "cache", variants=1, progress=False)
    styles = build_style_cache(model.autoencoder, source, manifest, cache, {}, k=1, progress=False)
    data = PairedLatentDataset(cache, source, manifest, styles=styles)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("style_cond.")}
    _, hist = train_generator(model, data, {**FAST, "stage": "base", "steps": 2, "sample_every": 2}, tmp_path / "base")
    assert len(hist) == 2
    moved = [n for n, p in model.named_parameters() if n.startswith("style_cond.heads") and not torch.equal(p, before[n])]
    assert moved  # the zero-initialised heads left zero: the base used the Ref
