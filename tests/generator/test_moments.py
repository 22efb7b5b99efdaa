"""Ref-set latent moments (tisynth.generator.moments): the transform, its settings, the sampler,
the synthesis run and the steering report that use it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tisynth import references
from tisynth.generator import build_generator, synthesis
from tisynth.generator.moments import (
    MomentError,
    MomentSettings,
    MomentTransfer,
    draw_names,
    encode_moments,
    gaussian_transport,
    latent_moments,
    moment_transfer,
)
from tisynth.generator.sample import sample_images, sample_latents
from tisynth.generator.steering import SteeringInputs, SteeringSettings, ref_steering
from tisynth.io import TileSet, write_image


def _latents(seed: int = 0, n: int = 6, c: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, 5, 5, generator=g) * torch.linspace(0.5, 2.0, c).view(1, c, 1, 1) + torch.arange(c).view(1, c, 1, 1)


def test_moments_are_per_channel_mean_then_std_over_the_set():
    z = _latents()
    m = latent_moments(z)
    assert m.shape == (8,)
    torch.testing.assert_close(m[:4], z.transpose(0, 1).flatten(1).mean(1))
    torch.testing.assert_close(m[4:], z.transpose(0, 1).flatten(1).std(1, unbiased=False))
    with pytest.raises(MomentError, match="N×C×h×w"):
        latent_moments(z[0])


def test_transfer_moves_the_means_to_the_target_and_scales_each_images_contrast():
    z = _latents()
    home = latent_moments(z)
    target = torch.cat([torch.tensor([3.0, -1.0, 0.5, 2.0]), torch.tensor([0.7, 1.5, 2.5, 0.3])])
    moved = moment_transfer(z, home, target, strength=1.0)
    torch.testing.assert_close(latent_moments(moved)[:4], target[:4], atol=1e-4, rtol=1e-4)
    ratio = target[4:] / home[4:]
    torch.testing.assert_close(moved.std((2, 3)), z.std((2, 3)) * ratio, atol=1e-4, rtol=1e-4)
    # a set whose images are flat around their own means gets exactly the target moments
    flat = z - z.mean((2, 3), keepdim=True) + z.mean((0, 2, 3), keepdim=True)
    torch.testing.assert_close(latent_moments(moment_transfer(flat, latent_moments(flat), target)), target, atol=1e-4, rtol=1e-4)
    # strength 0 and a target equal to home leave the latents as they are
    torch.testing.assert_close(moment_transfer(z, home, target, strength=0.0), z)
    torch.testing.assert_close(moment_transfer(z, home, home, strength=1.0), z, atol=1e-5, rtol=1e-5)
    # half strength goes half the way in the means
    half = latent_moments(moment_transfer(z, home, target, strength=0.5))
    torch.testing.assert_close(half[:4], (home[:4] + target[:4]) / 2, atol=1e-4, rtol=1e-4)


def test_a_sample_away_from_the_home_mean_still_moves_the_way_the_target_does():
    """Contrast is scaled around each image's own mean: a biased sample is not pushed the wrong way."""
    z = _latents()
    home = latent_moments(z)
    target = home.clone()
    target[:4] -= 0.5   # darker
    target[4:] *= 0.5   # and flatter
    biased = z - 3.0    # a generator whose samples sit well below the home mean
    shift = (moment_transfer(biased, home, target) - biased).mean((0, 2, 3))
    torch.testing.assert_close(shift, torch.full((4,), -0.5), atol=1e-4, rtol=1e-4)


def test_each_image_keeps_its_own_content_under_the_transfer():
    z = _latents()
    z[0] -= 2.0  # a darker image (say, mostly water) stays darker than the others after the shift
    home = latent_moments(z)
    target = home.clone()
    target[:4] += 1.0
    moved = moment_transfer(z, home, target)
    before, after = z.mean((2, 3)), moved.mean((2, 3))
    assert torch.equal(before.argsort(0), after.argsort(0))
    torch.testing.assert_close(after - before, torch.ones_like(before), atol=1e-5, rtol=1e-5)


def test_transfer_refuses_moments_that_do_not_fit():
    z = _latents()
    home = latent_moments(z)
    with pytest.raises(MomentError, match="home moments have 6 numbers"):
        moment_transfer(z, home[:6], home)
    with pytest.raises(MomentError, match="Ref moments of shape"):
        moment_transfer(z, home, home[None].repeat(2, 1))
    per_item = home[None].repeat(len(z), 1)
    torch.testing.assert_close(moment_transfer(z, home, per_item), z, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("params, key", [
    ({"strength": -0.5}, "strength"), ({"strength": float("nan")}, "strength"), ({"strength": True}, "strength"),
    ({"pool": "domain"}, "pool"), ({"tiles": 1}, "tiles"), ({"min_std": 0}, "min_std"), ({"min_std": True}, "min_std"),
    ({"seed": -1}, "seed"), ({"seed": "a"}, "seed"), ({"strenght": 1.0}, "strenght"),
    ({"transform": "wct"}, "transform"),
])
def test_bad_moment_settings_name_the_key(params, key):
    with pytest.raises(MomentError, match=key):
        MomentSettings.from_params(params)


def test_settings_default_to_off_and_validate_through_the_sample_block():
    assert not MomentSettings.from_params(None).enabled
    assert MomentSettings.from_params({"strength": 1}).enabled
    with pytest.raises(MomentError, match="pool"):
        synthesis.SynthesisSettings.from_params({"sampler": {"steps": 2}, "ref_moments": {"strength": 1.0, "pool": "x"}})


def _correlated(seed: int = 0, n: int = 6, c: int = 4, mix: float = 0.8) -> torch.Tensor:
    """Latents whose channels are correlated (channel 1 follows channel 0, as green follows red)."""
    z = _latents(seed, n, c)
    z[:, 1] = mix * z[:, 0] + (1 - mix) * z[:, 1]
    return z


def _cov(z: torch.Tensor) -> torch.Tensor:
    c = z.shape[1]
    return latent_moments(z, "covariance")[c:].view(c, c)


def test_covariance_moments_are_the_means_then_the_channel_covariance():
    z = _correlated()
    m = latent_moments(z, "covariance")
    assert m.shape == (4 + 16,)
    flat = z.transpose(0, 1).flatten(1)
    torch.testing.assert_close(m[:4], flat.mean(1))
    torch.testing.assert_close(m[4:].view(4, 4), torch.cov(flat, correction=0), atol=1e-5, rtol=1e-5)
    # its diagonal is the channel transform's variance
    torch.testing.assert_close(m[4:].view(4, 4).diagonal().sqrt(), latent_moments(z)[4:], atol=1e-5, rtol=1e-5)


def test_the_gaussian_transport_map_carries_one_covariance_onto_the_other():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g)
    home, target = a @ a.T + 0.1 * torch.eye(4), b @ b.T + 0.1 * torch.eye(4)
    m = gaussian_transport(home, target)
    torch.testing.assert_close(m, m.T, atol=1e-4, rtol=1e-4)                 # symmetric: the least displacement
    torch.testing.assert_close(m @ home @ m, target, atol=1e-3, rtol=1e-3)   # A Σ_h A = Σ_t
    torch.testing.assert_close(gaussian_transport(home, home), torch.eye(4), atol=1e-4, rtol=1e-4)
    # diagonal covariances: the per-channel spread ratio
    d_home, d_target = torch.diag(torch.tensor([1.0, 4.0, 0.25, 2.0])), torch.diag(torch.tensor([4.0, 1.0, 1.0, 2.0]))
    torch.testing.assert_close(gaussian_transport(d_home, d_target), torch.diag(torch.tensor([2.0, 0.5, 2.0, 1.0])),
                               atol=1e-5, rtol=1e-5)


def test_the_covariance_transfer_gives_a_set_the_target_covariance_the_channel_transfer_misses():
    z = _correlated()
    flat = z - z.mean((2, 3), keepdim=True) + z.mean((0, 2, 3), keepdim=True)  # images flat around the set's mean
    home = latent_moments(flat, "covariance")
    other = _correlated(seed=5, mix=-0.6) * 1.5 + 0.7                         # channels 0 and 1 now anti-correlated
    target = latent_moments(other, "covariance")
    moved = moment_transfer(flat, home, target, transform="covariance")
    torch.testing.assert_close(latent_moments(moved, "covariance"), target, atol=1e-3, rtol=1e-3)
    # the per-channel transfer gets the variances but keeps the home correlation
    per_channel = moment_transfer(flat, latent_moments(flat), latent_moments(other))
    torch.testing.assert_close(_cov(per_channel).diagonal(), _cov(other).diagonal(), atol=1e-3, rtol=1e-3)
    assert _cov(per_channel)[0, 1] > 0 > _cov(other)[0, 1]
    # target = home and strength 0 change nothing; per-item targets of one set give the set's result
    torch.testing.assert_close(moment_transfer(z, home, home, transform="covariance"), z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(moment_transfer(z, home, target, strength=0.0, transform="covariance"), z)
    torch.testing.assert_close(moment_transfer(flat, home, target[None].repeat(len(z), 1), transform="covariance"), moved)
    # diagonal covariances: the same images as the channel transfer
    c = z.shape[1]
    diag = lambda m: torch.cat([m[:c], torch.diag(m[c:] ** 2).flatten()])  # noqa: E731
    h2, t2 = latent_moments(z), latent_moments(other)
    torch.testing.assert_close(moment_transfer(z, diag(h2), diag(t2), transform="covariance"), moment_transfer(z, h2, t2),
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(MomentError, match="need 20 for transform 'covariance'"):
        moment_transfer(z, latent_moments(z), target, transform="covariance")


def test_the_transform_enters_a_fingerprint_only_when_it_is_not_the_default():
    assert "transform" not in MomentSettings.from_params({"strength": 1.0}).to_dict()
    assert MomentSettings.from_params({"strength": 1.0, "transform": "covariance"}).to_dict()["transform"] == "covariance"


def test_draw_names_is_seeded_distinct_and_capped():
    names = [f"t{i}" for i in range(20)] + ["t3", "t3"]
    a = draw_names(names, 5, seed=1)
    assert a == draw_names(list(reversed(names)), 5, seed=1) and len(set(a)) == 5
    assert draw_names(names[:3], 5, seed=1) == ["t0", "t1", "t2"]


@pytest.fixture(scope="module")
def model(registry):
    torch.set_num_threads(1)
    return build_generator({"preset": "tiny"}, registry, seed=0).eval()


def _masks_refs(n: int = 3, size: int = 64, shift: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, 5, (n, size, size), dtype=np.uint8)
    refs = np.clip(rng.integers(60, 200, (n, size, size, 3)) + shift, 0, 255).astype(np.uint8)
    return masks, refs


def test_the_sampler_applies_the_transfer_to_the_denoised_latents_before_decoding(model, registry):
    masks, refs = _masks_refs()
    prompts = [registry.prompt(m) for m in masks]
    cfg = {"steps": 2, "guidance_scale": 1.0, "batch_size": 2}
    plain = sample_images(model, masks, refs, prompts, [1, 2, 3], cfg)
    home = encode_moments(model, refs)
    same = sample_images(model, masks, refs, prompts, [1, 2, 3], cfg, moments=MomentTransfer(home, home))
    assert np.abs(same.astype(int) - plain.astype(int)).max() <= 1  # target = home: nothing moves
    darker = home.clone()
    c = model.latent_channels
    darker[:c] -= 0.3
    moved = sample_images(model, masks, refs, prompts, [1, 2, 3], cfg, moments=MomentTransfer(home, darker))
    assert np.abs(moved.astype(float) - plain).mean() > 2
    # exactly: decode(transfer(the sampler's latents)); the batch size does not matter
    lat = sample_latents(model, model.encode_control(masks), model.encode_images(torch.from_numpy(refs).permute(0, 3, 1, 2).float() / 127.5 - 1),
                         prompts, [1, 2, 3], cfg)
    expect = ((model.decode_latents(moment_transfer(lat, home, darker)).permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255)
    assert np.abs(moved.astype(float) - expect).max() <= 1
    again = sample_images(model, masks, refs, prompts, [1, 2, 3], {**cfg, "batch_size": 3}, moments=MomentTransfer(home, darker))
    assert np.abs(again.astype(int) - moved.astype(int)).max() <= 1
    with pytest.raises(MomentError, match="for 2 items, 3 items"):
        sample_images(model, masks, refs, prompts, [1, 2, 3], cfg, moments=MomentTransfer(home, darker[None].repeat(2, 1)))


def test_with_ref_moments_the_target_refs_carry_the_target_look(model, registry):
    """An untrained generator's Ref path does nothing; with Ref-set moments the samples follow the
    target domain's colour shift (the steering report's colour transfer and Ref effect)."""
    masks, src_refs = _masks_refs(n=4, shift=0, seed=1)
    _, tgt_refs = _masks_refs(n=4, shift=-50, seed=2)
    _, real_src = _masks_refs(n=6, shift=0, seed=3)
    _, real_tgt = _masks_refs(n=6, shift=-50, seed=4)
    inputs = SteeringInputs(names=[f"m{i}" for i in range(4)], masks=masks, prompts=[registry.prompt(m) for m in masks],
                            source_refs=src_refs, target_refs=tgt_refs, real_source=real_src, real_target=real_tgt,
                            source_label="source", target_label="target")
    cfg = SteeringSettings.from_params({"masks": 4, "seed_items": 2, "real_tiles": 6, "kid": False})
    sampler = {"steps": 2, "guidance_scale": 1.0}
    off, _ = ref_steering(model, inputs, cfg, sampler)
    on, images = ref_steering(model, inputs, cfg, sampler, moments={"strength": 1.0})
    assert abs(off["colour_transfer"]) < 0.05 and off["ref_effect"] < 0.5
    assert on["colour_transfer"] > 0.5 and on["ref_effect"] > 10 * max(off["ref_effect"], 0.1)
    assert images["target"].mean() < images["source"].mean() - 20  # the target Refs are 50 grey levels darker
    assert 0 < on["ref_over_seed_at_real_shift"] and on["ref_effect_at_real_shift"] > 10
    cov, _ = ref_steering(model, inputs, cfg, sampler, moments={"strength": 1.0, "transform": "covariance"})
    assert cov["colour_transfer"] > 0.5 and cov["ref_effect"] > 10 * max(off["ref_effect"], 0.1)


@pytest.fixture
def plan_tiles(tmp_path, registry):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        write_image(tmp_path / "tiles" / "images" / f"t{i}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        write_image(tmp_path / "tiles" / "masks" / f"t{i}.png", rng.integers(0, 5, (32, 32), dtype=np.uint8))
        rows.append({"name": f"t{i}", "split": "train", "image": f"images/t{i}.png", "mask": f"masks/t{i}.png",
                     "group": "g", "prompt": "a satellite image of built-up farmland"})
    for i in range(3):
        write_image(tmp_path / "target" / "images" / f"u{i}.png", (rng.integers(0, 120, (32, 32, 3))).astype(np.uint8))
    manifest = pd.DataFrame(rows)
    target = pd.DataFrame({"name": [f"u{i}" for i in range(3)], "split": "train", "image": [f"images/u{i}.png" for i in range(3)],
                           "mask": None, "group": "h"})
    pool = references.build_pool(target, None, "target")
    plan = references.plan_synthesis(manifest, pool, references.PairingConfig(refs_per_mask=1, seeds_per_pair=1))
    return {"source": TileSet(tmp_path / "tiles"), "target": TileSet(tmp_path / "target")}, plan


def test_a_synthesis_run_with_ref_moments_records_them_resumes_and_is_stale_when_they_change(tmp_path, model, plan_tiles):
    sets, plan = plan_tiles
    small, base, on = _synthesis_setup(model)
    folder = tmp_path / "syn"
    assert synthesis.write_synthetic_images(folder, small, plan, sets, on, "v1") == len(plan)
    import json

    manifest = json.loads((folder / "run.json").read_text())
    recorded = json.dumps(manifest)
    assert "ref_moments" in recorded and "home" in recorded and "target" in recorded
    first = _pixels(folder)
    assert (folder / synthesis.MOMENT_CACHE).is_file()
    from tisynth.generator import moments as moments_module

    def no_encoding(*args, **kwargs):
        raise AssertionError("the Ref moments were encoded again")

    with pytest.MonkeyPatch.context() as mp:  # a resumed run reads its moments, it does not encode them
        for name in ("encode_moments", "encode_home_moments", "encode_item_moments"):
            mp.setattr(moments_module, name, no_encoding)
        assert synthesis.write_synthetic_images(folder, small, plan, sets, on, "v1") == 0  # resumes: nothing to do
    (folder / synthesis.MOMENT_CACHE).write_bytes(b"not a safetensors file")  # a broken cache is encoded again
    assert synthesis.write_synthetic_images(folder, small, plan, sets, on, "v1") == 0
    from safetensors.torch import load_file

    assert set(load_file(folder / synthesis.MOMENT_CACHE)) == {"home", "ref:target"}  # and written anew
    # sharded runs take the moments over the whole plan: the same images (up to a CPU's rounding)
    for k in (0, 1):
        shard = synthesis.SynthesisSettings(**base, ref_moments={"strength": 1.0}, shard_index=k, shard_count=2)
        synthesis.write_synthetic_images(tmp_path / "sharded", small, plan, sets, shard, "v1")
    sharded = _pixels(tmp_path / "sharded")
    assert sharded.keys() == first.keys()
    assert all(np.abs(sharded[n].astype(int) - first[n].astype(int)).max() <= 1 for n in first)
    # without moments the images differ, and the old ones are moved aside, not deleted
    off = synthesis.SynthesisSettings(**base)
    assert synthesis.write_synthetic_images(folder, small, plan, sets, off, "v1") == len(plan)
    plain = _pixels(folder)
    assert any(np.abs(plain[n].astype(int) - first[n].astype(int)).mean() > 1 for n in first)
    kept = list((folder / "superseded").rglob("*.png"))
    assert len(kept) == len(plan)


def test_the_moment_cache_gives_what_encoding_gives_and_never_stale_vectors(tmp_path, model, plan_tiles):
    sets, plan = plan_tiles
    small = _synthesis_setup(model)[0]
    cfg = MomentSettings.from_params({"strength": 1.0})
    cache = tmp_path / "moments.safetensors"
    fresh, _ = synthesis.plan_moments(small, plan, sets, cfg)
    cached, _ = synthesis.plan_moments(small, plan, sets, cfg, cache, "v1")
    again, _ = synthesis.plan_moments(small, plan, sets, cfg, cache, "v1")
    for key in fresh:
        torch.testing.assert_close(cached[key], fresh[key])
        torch.testing.assert_close(again[key], fresh[key])
    # another strength reads the same vectors; another transform, generator or set does not
    stronger = MomentSettings.from_params({"strength": 0.5})
    torch.testing.assert_close(synthesis.plan_moments(small, plan, sets, stronger, cache, "v1")[0]["home"], fresh["home"])
    cov = MomentSettings.from_params({"strength": 1.0, "transform": "covariance"})
    c = small.latent_channels
    assert synthesis.plan_moments(small, plan, sets, cov, cache, "v1")[0]["home"].numel() == c + c * c
    # the cache is what a rerun reads (a tampered file under the right key is taken as it is) and its
    # key holds the generator version: another version encodes again
    from safetensors import safe_open
    from safetensors.torch import save_file

    synthesis.plan_moments(small, plan, sets, cfg, cache, "v1")
    with safe_open(str(cache), framework="pt") as f:
        key = f.metadata()["key"]
    save_file({k: v + 100.0 for k, v in fresh.items()}, str(cache), metadata={"key": key})
    torch.testing.assert_close(synthesis.plan_moments(small, plan, sets, cfg, cache, "v1")[0]["home"], fresh["home"] + 100)
    torch.testing.assert_close(synthesis.plan_moments(small, plan, sets, cfg, cache, "v2")[0]["home"], fresh["home"])
    synthesis.plan_moments(small, plan, sets, cfg, cache, "v1")  # v1's vectors in the cache again
    ref = sorted(set(plan["ref"]))[0]
    write_image(sets["target"].path(ref), np.full((32, 32, 3), 250, np.uint8))
    after, _ = synthesis.plan_moments(small, plan, sets, cfg, cache, "v1")
    torch.testing.assert_close(after["ref:target"], synthesis.plan_moments(small, plan, sets, cfg)[0]["ref:target"])
    assert not torch.allclose(after["ref:target"], fresh["ref:target"])
    with pytest.raises(ValueError, match="needs the generator version"):
        synthesis.plan_moments(small, plan, sets, cfg, cache, "")


def _synthesis_setup(model):
    """A 32 px generator, the shared synthesis settings and those settings with Ref moments on."""
    small = build_generator({"preset": "tiny", "image_size": 32}, model.registry, seed=0).eval()
    base = {"sample": {"steps": 2, "guidance_scale": 1.0, "batch_size": 2}, "chunk": 3}
    return small, base, synthesis.SynthesisSettings(**base, ref_moments={"strength": 1.0})


def _pixels(folder):
    from tisynth.io import read_image

    return {p.name: read_image(p) for p in sorted((folder / "images").glob("*"))}


def test_a_rewritten_tile_of_the_ref_set_resamples_and_item_pools_take_each_ref(tmp_path, model, plan_tiles):
    sets, plan = plan_tiles
    small, base, on = _synthesis_setup(model)
    folder = tmp_path / "syn"
    synthesis.write_synthetic_images(folder, small, plan, sets, on, "v1")
    assert synthesis.write_synthetic_images(folder, small, plan, sets, on, "v1") == 0
    # a target tile of the Ref set (not necessarily any image's own Ref) is rewritten: the set's look changed
    ref = sorted(set(plan["ref"]))[0]
    write_image(sets["target"].path(ref), np.full((32, 32, 3), 250, np.uint8))
    assert synthesis.write_synthetic_images(folder, small, plan, sets, on, "v1") == len(plan)
    # pool item: each image takes its own Ref's moments; two Refs that differ give images that differ
    item = synthesis.SynthesisSettings(**base, ref_moments={"strength": 1.0, "pool": "item"})
    synthesis.write_synthetic_images(tmp_path / "item", small, plan, sets, item, "v1")
    set_px, item_px = _pixels(folder), _pixels(tmp_path / "item")
    assert set_px.keys() == item_px.keys()
    assert any(np.abs(set_px[n].astype(int) - item_px[n].astype(int)).mean() > 1 for n in set_px)
    # the covariance transform: its own fingerprint, so the folder is sampled again
    cov = synthesis.SynthesisSettings(**base, ref_moments={"strength": 1.0, "transform": "covariance"})
    assert synthesis.write_synthetic_images(folder, small, plan, sets, cov, "v1") == len(plan)
    assert synthesis.write_synthetic_images(folder, small, plan, sets, cov, "v1") == 0


def test_ref_moments_need_the_refs_and_are_checked_with_the_parameters(tmp_path):
    from tisynth.validation import ParameterError, validate_parameters

    with pytest.raises(Exception, match="mode 'controlnet' samples without Refs"):
        synthesis.SynthesisSettings.from_params({"sampler": {"mode": "controlnet"}, "ref_moments": {"strength": 1.0}})
    synthesis.SynthesisSettings.from_params({"sampler": {"mode": "controlnet"}, "ref_moments": {"strength": 0.0}})
    with pytest.raises(MomentError, match="must be a mapping"):
        synthesis.SynthesisSettings.from_params({"sampler": {}, "ref_moments": 1.0})
    from pathlib import Path

    conf = Path(__file__).resolve().parents[2] / "conf" / "base"
    from tisynth.validation import load_defaults

    defaults = load_defaults(conf)
    params = {"sample": {**defaults["sample"], "ref_moments": {**defaults["sample"]["ref_moments"], "strength": 1.0,
                                                                "min_std": 0.01}}}
    assert validate_parameters(params, defaults) == ["sample"]
    params["sample"]["ref_moments"]["pool"] = "domain"
    with pytest.raises(ParameterError, match="ref_moments.pool"):
        validate_parameters(params, defaults)


def test_pool_colour_statistics_equal_those_of_the_stacked_tiles(tmp_path):
    from tisynth.generator.steering import colour_stats, colour_transfer, pool_colour_stats

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(5)]
    for i, im in enumerate(images):
        write_image(tmp_path / "images" / f"t{i}.png", im)
    stats = pool_colour_stats(TileSet(tmp_path), [f"images/t{i}.png" for i in range(5)])
    np.testing.assert_allclose(stats, colour_stats(np.stack(images)), atol=1e-9)
    # colour_transfer takes pool statistics in place of the real images
    dark = [np.clip(im.astype(int) - 40, 0, 255).astype(np.uint8) for im in images]
    direct = colour_transfer(np.stack(images), np.stack(dark), np.stack(images), np.stack(dark))
    pooled = colour_transfer(np.stack(images), np.stack(dark), colour_stats(np.stack(images)), colour_stats(np.stack(dark)))
    assert direct["colour_transfer"] == pytest.approx(pooled["colour_transfer"]) == pytest.approx(1.0)


def test_the_real_colour_shift_applied_to_images_gives_them_the_target_statistics():
    from tisynth.generator.steering import apply_colour_shift, colour_stats

    rng = np.random.default_rng(1)
    source = rng.integers(60, 190, (4, 16, 16, 3)).astype(np.uint8)
    target_stats = colour_stats(source) + np.array([-10.0, 5.0, 12.0, 0.0, 0.0, 0.0])
    target_stats[3:] *= np.array([0.5, 1.0, 1.3])
    moved = apply_colour_shift(source, colour_stats(source), target_stats)
    np.testing.assert_allclose(colour_stats(moved), target_stats, atol=0.6)
    np.testing.assert_array_equal(apply_colour_shift(source, colour_stats(source), colour_stats(source)), source)
