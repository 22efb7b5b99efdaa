"""Parameters are checked before a run starts: unknown keys name their path and the nearest valid
name, bad values fail with the stage's own message; the shipped environments pass."""

from __future__ import annotations

import copy

import numpy as np

import pytest
from kedro.config import OmegaConfigLoader

from tests.conftest import REPO
from tisynth.io import write_image
from tisynth.params import check_keys
from tisynth.validation import ParameterError, blocks_of, load_defaults, validate_parameters

DEFAULTS = load_defaults(REPO / "conf" / "base")


def _params(env: str) -> dict:
    loader = OmegaConfigLoader(conf_source=str(REPO / "conf"), base_env="base", default_run_env=env,
                               runtime_params={"dataset": {"root": "x"}}, merge_strategy={"parameters": "soft"})
    return loader["parameters"]


@pytest.mark.parametrize("env", ["base", "folder", "sd15"])
def test_the_shipped_environments_pass(env):
    assert set(validate_parameters(_params(env), DEFAULTS)) == set(DEFAULTS)


def _with(params: dict, path: str, value) -> dict:
    out = copy.deepcopy(params)
    *keys, last = path.split(".")
    node = out
    for key in keys:
        node = node[key]
    node[last] = value
    return out


@pytest.mark.parametrize(("path", "value", "message"), [
    ("sample.sampler.guidance_scal", 2.0, "did you mean guidance_scale"),
    ("sample.quality.imags", 4, "did you mean sample.quality.images"),
    ("train_generator.B.learning_rat", 1e-3, r"train_generator\.B .*did you mean learning_rate"),
    ("train_generator.latent_cache.varaints", 2, "did you mean train_generator.latent_cache.variants"),
    ("filter.tolerence", 1.2, "did you mean filter.tolerance"),
    ("segment.mix.real_fractoin", 0.5, "did you mean segment.mix.real_fraction"),
    ("segmenter.train.iteration", 10, "did you mean iterations"),
    ("ingest.split.seeed", 1, "did you mean ingest.split.seed"),
    ("references.pairing.stratgy", "random", "did you mean references.pairing.strategy"),
    ("read_generator.guidanc", [2.0], "did you mean read_generator.guidance"),
    ("generator.mask_conditioning", "spad", "mask_conditioning must be"),
    ("references.pairing.strategy", "nearest", "strategy must be one of"),
    ("sample.sampler.timestep_spacing", "middle", "timestep_spacing"),
    ("segment.val_splt", "val", "did you mean segment.val_split"),
    ("segment.seeds", ["0", 1], "segment.seeds: a non-empty list of integers"),
    ("segment.eval_sets", {"test": ["test"]}, "segment.eval_sets: a mapping"),
    ("segment.mix.mode", "half", "mix.mode: 'half' is not one of"),
    ("filter.work_root", "elsewhere", r"filter.*work_root"),  # moved to the shared segmenter_work_root
    ("train_generator.style_pairs.family.gamma", [1.5, 0.7], r"train_generator\.style_pairs\.family\.gamma: .* not a valid interval"),
    ("train_generator.style_pairs.family.haze", [0.1], r"train_generator\.style_pairs\.family\.haze: expected an interval"),
    ("train_generator.style_pairs.family.gama", [0.8, 1.2], r"did you mean train_generator.style_pairs.family.gamma"),
    ("train_generator.style_pairs.k", 0, r"train_generator\.style_pairs\.k must be an integer >= 1"),
    ("train_generator.style_pairs.set_size", 1, r"train_generator\.style_pairs\.set_size"),
    ("train_generator.unlabeled.repeat", 0, r"train_generator\.unlabeled\.repeat"),
    ("generator.style_conditioning", "local", "style_conditioning must be"),
    ("ref_steering.seed_items", 100, r"ref_steering\.seed_items"),
    ("ref_steering.maskz", 3, "did you mean ref_steering.masks"),
])
def test_typos_and_bad_values_are_refused_with_their_path(path, value, message):
    with pytest.raises(ParameterError, match=message):
        validate_parameters(_with(_params("base"), path, value), DEFAULTS)


def test_free_form_entries_stay_free_and_unknown_blocks_are_refused():
    params = _with(_params("base"), "ref_augment.scale", 0.0)
    params = _with(params, "generator.autoencoder", {"type": "space_to_depth", "factor": 4, "scale": 2.0})  # a RefAugment argument the YAML leaves at its default
    validate_parameters(params, DEFAULTS)
    with pytest.raises(ParameterError, match="unknown parameter block 'sampel'"):
        validate_parameters({**params, "sampel": {}}, DEFAULTS)


def test_only_the_blocks_a_pipeline_reads_are_checked():
    bad = _with(_params("base"), "filter.tolerence", 1.0)
    assert "filter" not in validate_parameters(bad, DEFAULTS, blocks_of(["params:sample", "tiles"]))
    assert blocks_of(["params:sample", "params:train_generator.B", "tiles"]) == {"sample", "train_generator"}


def test_check_keys_walks_nested_mappings():
    known = {"a": {"b": 1, "free": None}}
    check_keys({"a": {"b": 2, "free": {"anything": 1}}}, known, "x", ValueError)
    with pytest.raises(ValueError, match=r"x\.a\.c"):
        check_keys({"a": {"c": 2}}, known, "x", ValueError)


def test_style_pairs_need_the_latent_cache_and_a_target_with_images(tmp_path):
    folder = _with(_with(_params("folder"), "train_generator.style_pairs.enabled", True), "train_generator.unlabeled.enabled", True)
    params = _with(_with(folder, "train_generator.latent_cache.enabled", False), "train_generator.unlabeled.enabled", False)
    with pytest.raises(ParameterError, match=r"style_pairs\.enabled needs train_generator\.latent_cache\.enabled"):
        validate_parameters(params, DEFAULTS)
    empty = tmp_path / "target"
    (empty / "images").mkdir(parents=True)
    (empty / "images" / "notes.txt").write_text("no image here")
    params = {**folder, "target": {**folder.get("target", {}), "root": str(empty)}}
    with pytest.raises(ParameterError, match=r"target\.root: .* holds no images"):
        validate_parameters(params, DEFAULTS)
    write_image(empty / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    assert "train_generator" in validate_parameters(params, DEFAULTS)
