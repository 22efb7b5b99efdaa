"""Resumable, shardable synthesis runs (the ``sample`` pipeline's writer) and the training-run
bookkeeping around the generator stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tisynth import references
from tisynth.classes import ClassRegistry
from tisynth.generator import build_generator, synthesis
from tisynth.generator import stages as generator_runs
from tisynth.io import TileSet, read_image, read_raster, write_image

REG = ClassRegistry.from_records([{"id": i, "name": n, "color": c} for i, (n, c) in enumerate(
    [("road", [255, 0, 0]), ("tree", [0, 255, 0]), ("water", [0, 0, 255])])])


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_generator({"preset": "tiny", "image_size": 32}, REG).eval()


@pytest.fixture
def tiles(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        write_image(tmp_path / "tiles" / "images" / f"t{i}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        write_image(tmp_path / "tiles" / "masks" / f"t{i}.png", rng.integers(0, 3, (32, 32), dtype=np.uint8))
        rows.append({"name": f"t{i}", "split": "train", "image": f"images/t{i}.png", "mask": f"masks/t{i}.png",
                     "group": "g", "prompt": "a satellite image of road tree water"})
    manifest = pd.DataFrame(rows)
    pool = references.build_pool(manifest, None, "source")
    plan = references.plan_synthesis(manifest, pool, references.PairingConfig(refs_per_mask=2, seeds_per_pair=2))
    return TileSet(tmp_path / "tiles"), plan


SETTINGS = synthesis.SynthesisSettings(sample={"steps": 2, "guidance_scale": 2.0, "batch_size": 3}, chunk=5)


def run(folder, model, plan, tiles, settings=SETTINGS, version="v1"):
    return synthesis.write_synthetic_images(folder, model, plan, {"source": tiles}, settings, version)


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: read_image(p) for p in sorted((folder / "images").glob("*"))}


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "images").glob("*"))}


def test_interrupted_run_resumes_without_duplicates(tmp_path, model, tiles, monkeypatch):
    tileset, plan = tiles
    assert len(plan) == 16
    full = tmp_path / "full"
    assert run(full, model, plan, tileset) == 16
    reference = files(full)
    assert len(reference) == 16

    # kill the run while it writes the 8th image: 7 finished files, no partial one
    calls = {"n": 0}
    real_write = synthesis.write_image

    def dying_write(path, array, **kw):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        real_write(path, array, **kw)

    monkeypatch.setattr(synthesis, "write_image", dying_write)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        run(part, model, plan, tileset)
    assert len(files(part)) == 7
    monkeypatch.setattr(synthesis, "write_image", real_write)

    made = run(part, model, plan, tileset)
    assert made == 9  # only what was missing
    assert files(part) == reference  # same images, byte for byte
    assert [p.name for p in part.rglob("*tmp*")] == []
    assert run(part, model, plan, tileset) == 0  # nothing left to do
    manifest = synthesis.index_synthetic(TileSet(part), plan, "png")
    assert len(manifest) == 16 and manifest["name"].is_unique and set(manifest["generator_version"]) == {"v1"}


def test_an_image_whose_mask_or_ref_was_rewritten_is_sampled_again(tmp_path, model, tiles):
    tileset, plan = tiles
    folder = tmp_path / "syn"
    assert run(folder, model, plan, tileset) == 16
    before = files(folder)
    # t0's mask rewritten under its name (the tiles ingested again): only the images of that mask
    mask = tileset.root / "masks" / "t0.png"
    write_image(mask, (read_raster(mask).astype(np.int64) + 1).clip(0, 2).astype(np.uint8))
    redo = set(plan.loc[plan["mask_name"] == "t0", "name"])
    assert run(folder, model, plan, tileset) == len(redo) > 0
    after = files(folder)
    assert {n for n in after if after[n] != before[n]} == {f"{n}.png" for n in redo}
    kept = {p.name: p.read_bytes() for p in (folder / "superseded" / "changed-inputs").rglob("*.png")}
    assert kept == {f"{n}.png": before[f"{n}.png"] for n in redo}  # the old images are kept aside
    # a Ref rewritten: the images that used it
    ref_users = set(plan.loc[plan["ref_name"] == "t1", "name"])
    write_image(tileset.root / "images" / "t1.png", np.zeros((32, 32, 3), np.uint8))
    assert run(folder, model, plan, tileset) == len(ref_users) > 0
    assert run(folder, model, plan, tileset) == 0
    # images with no record (an earlier version kept none) are taken as they are, and recorded
    shutil.rmtree(folder / "sources")
    assert run(folder, model, plan, tileset) == 0
    assert len(list((folder / "sources").iterdir())) == 16


def test_shards_and_batch_size_do_not_change_pixels(tmp_path, model, tiles):
    tileset, plan = tiles
    one = tmp_path / "one"
    run(one, model, plan, tileset)
    sharded = tmp_path / "sharded"
    for i in range(3):
        s = synthesis.SynthesisSettings(sample={**SETTINGS.sample, "batch_size": 2}, chunk=4, shard_index=i, shard_count=3)
        run(sharded, model, plan, tileset, s)
    a, b = pixels(sharded), pixels(one)
    assert a.keys() == b.keys()
    # the same computation per item; only a CPU's kernel choice for another batch size can round differently
    for name in a:
        diff = np.abs(a[name].astype(int) - b[name].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, name
    # a shard alone indexes only what exists
    lone = tmp_path / "lone"
    run(lone, model, plan, tileset, synthesis.SynthesisSettings(sample=SETTINGS.sample, shard_index=0, shard_count=4))
    assert len(synthesis.index_synthetic(TileSet(lone), plan, "png")) == 4


def test_a_new_generator_or_sampler_makes_old_images_stale(tmp_path, model, tiles):
    tileset, plan = tiles
    folder = tmp_path / "syn"
    run(folder, model, plan.head(4), tileset)
    assert run(folder, model, plan.head(4), tileset) == 0
    assert run(folder, model, plan.head(4), tileset, version="v2") == 4
    other = synthesis.SynthesisSettings(sample={**SETTINGS.sample, "guidance_scale": 5.0}, chunk=5)
    assert run(folder, model, plan.head(4), tileset, other, version="v2") == 4
    # batch size is not part of the fingerprint: nothing to redo
    again = synthesis.SynthesisSettings(sample={**SETTINGS.sample, "guidance_scale": 5.0, "batch_size": 1}, chunk=2)
    assert run(folder, model, plan.head(4), tileset, again, version="v2") == 0


def test_images_depend_on_their_conditions(tmp_path, model, tiles):
    tileset, plan = tiles
    run(tmp_path / "s", model, plan, tileset)
    imgs = {n: read_image(tmp_path / "s" / synthesis.image_path(n, "png")) for n in plan["name"]}
    assert len({v.tobytes() for v in imgs.values()}) == len(imgs)  # every (mask, Ref, seed) differs


def test_generator_version_is_a_content_hash(model):
    v1 = synthesis.generator_version(model)
    assert v1 == synthesis.generator_version(model)
    with torch.no_grad():
        next(model.aia.parameters()).add_(1.0)
    assert synthesis.generator_version(model) != v1
    with torch.no_grad():
        next(model.aia.parameters()).sub_(1.0)


def test_accelerate_processes_take_the_shard_of_their_rank():
    env = {"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "2"}
    cfg = synthesis.SynthesisSettings.from_params({}, env=env)
    assert (cfg.shard_index, cfg.shard_count) == (2, 4)
    explicit = synthesis.SynthesisSettings.from_params({"shard": {"index": 1, "count": 3}}, env=env)
    assert (explicit.shard_index, explicit.shard_count) == (1, 3)
    assert synthesis.SynthesisSettings.from_params({}, env={}).shard_count == 1


def test_bad_synthesis_settings():
    with pytest.raises(ValueError, match="shard"):
        synthesis.SynthesisSettings.from_params({"shard": {"index": 2, "count": 2}})
    with pytest.raises(ValueError, match="image_format"):
        synthesis.SynthesisSettings.from_params({"image_format": "webp"})


def test_checkpoint_folders_are_resumed_only_by_the_same_run(tmp_path):
    params = {"common": {"seed": 0, "batch_size": 4}, "base": {"steps": 10, "learning_rate": 1e-3},
              "A": {"steps": 5}, "B": {"steps": 5}}
    data_fp = generator_runs.data_fingerprint({"preset": "tiny"}, {"a": "1:1", "b": "2:2"})
    fps = []
    upstream = data_fp
    for stage in generator_runs.STAGES:
        own, upstream = generator_runs.stage_fingerprints(upstream, generator_runs.stage_config(params, stage, {}))
        fps.append(own)
    # more steps for a stage keep its own fingerprint (resume and continue) but change the next stages'
    longer = {**params, "base": {"steps": 20, "learning_rate": 1e-3}}
    own_base, up = generator_runs.stage_fingerprints(data_fp, generator_runs.stage_config(longer, "base", {}))
    own_a, _ = generator_runs.stage_fingerprints(up, generator_runs.stage_config(longer, "A", {}))
    assert own_base == fps[0] and own_a != fps[1]
    # other data -> other fingerprints: other tiles, or the same names with other bytes
    assert generator_runs.data_fingerprint({"preset": "tiny"}, {"a": "1:1", "c": "2:2"}) != data_fp
    assert generator_runs.data_fingerprint({"preset": "tiny"}, {"a": "1:1", "b": "2:3"}) != data_fp

    folder = tmp_path / "stage_A"
    generator_runs.prepare_checkpoint_dir(folder, fps[1])
    (folder / "step-00000005").mkdir()
    (folder / "step-00000005" / "state.json").write_text("{}")
    generator_runs.prepare_checkpoint_dir(folder, fps[1])
    assert (folder / "step-00000005").is_dir()  # same run: kept for resuming
    generator_runs.prepare_checkpoint_dir(folder, own_a)
    assert not (folder / "step-00000005").exists()  # another run: moved aside, not deleted
    (aside,) = (folder / "superseded").iterdir()
    assert (aside / "step-00000005").is_dir()
    assert json.loads((aside / "run.json").read_text())["fingerprint"] == fps[1]

    # checkpoints of an earlier version (its fingerprint knew the tiles by name) are adopted, not set aside
    earlier = tmp_path / "stage_B"
    generator_runs.prepare_checkpoint_dir(earlier, "by-names")
    (earlier / "step-00000005").mkdir()
    (earlier / "step-00000005" / "state.json").write_text("{}")
    generator_runs.prepare_checkpoint_dir(earlier, fps[2], adopt=["by-names"])
    assert (earlier / "step-00000005").is_dir() and not (earlier / "superseded").exists()
    assert json.loads((earlier / "run.json").read_text())["fingerprint"] == fps[2]
    generator_runs.prepare_checkpoint_dir(earlier, own_a, adopt=["by-names"])  # adoption is no wildcard
    assert not (earlier / "step-00000005").exists() and (earlier / "superseded").is_dir()
    # the names-only form is exactly what earlier versions wrote (digest pinned from such a version)
    assert generator_runs.names_data_fingerprint({"preset": "tiny", "image_size": 32}, ["t2", "t0", "t1"]) == \
        "11f145bf01c9552a"


def test_superseded_images_are_moved_aside_not_deleted(tmp_path, model, tiles):
    tileset, plan = tiles
    folder = tmp_path / "syn"
    run(folder, model, plan.head(3), tileset)
    first = {p.name: p.read_bytes() for p in (folder / "images").iterdir()}
    assert run(folder, model, plan.head(3), tileset, version="v2") == 3
    moved = list((folder / "superseded").iterdir())
    assert len(moved) == 1
    kept = {p.name: p.read_bytes() for p in (moved[0] / "images").iterdir()}
    assert kept == first  # the earlier run's images survive, byte for byte
    assert json.loads((moved[0] / "run.json").read_text())["fingerprint"]["generator_version"] == "v1"
    assert synthesis.run_generator_version(folder) == "v2"


def test_a_sampler_typo_fails_before_any_image_is_touched(tmp_path, model, tiles):
    """The reported data loss: a typo in sample.sampler.* wiped the finished images, then failed."""
    from tisynth.generator.sample import SamplingError
    from tisynth.pipelines.sample.nodes import sample_synthetic_images

    tileset, plan = tiles
    folder = tmp_path / "syn"
    run(folder, model, plan.head(3), tileset)
    before = {p.name: p.read_bytes() for p in (folder / "images").iterdir()}
    params = {"sampler": {**SETTINGS.sample, "guidance_scal": 2.0}, "chunk": 4}
    with pytest.raises(SamplingError, match="guidance_scal"):
        writer = sample_synthetic_images(model, tileset, tileset, plan.head(3), params)
        writer(folder)
    assert {p.name: p.read_bytes() for p in (folder / "images").iterdir()} == before
    assert not (folder / "superseded").exists()
