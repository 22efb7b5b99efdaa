"""End-to-end: train on an easy generated task, predict, evaluate, save and load, rerun."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tisynth.io import DataError, read_image
from tisynth.segmentation.config import ConfigError, SegmenterConfig, build_model_config
from tisynth.segmentation.metrics import compute_metrics
from tisynth.segmentation.pairs import read_index_mask
from tisynth.segmentation.segmenter import Segmenter, build_model
from tisynth.segmentation.train import train_segmenter

from .toydata import manifest_pairs, tiny_config


def test_tiny_training_learns_the_task(trained, toy_tiles):
    seg, work = trained
    tiles, manifest = toy_tiles
    test = manifest_pairs(tiles.root, manifest, "test")
    m = seg.evaluate(test)
    # chance: a constant prediction of the majority class gives mIoU < 0.3 on this task
    truth = np.concatenate([read_index_mask(p.mask, 3).ravel() for p in test])
    majority = np.bincount(truth[truth != 255]).argmax()
    chance = compute_metrics(truth, np.where(truth == 255, 0, majority), 3).miou
    assert chance < 0.3
    assert m.miou > 0.6, m
    assert m.oa > 0.8
    # model selection happened on val, and recorded it
    info = seg.training_info
    assert info["selection"] == "best val mIoU"
    assert info["best_val_mIoU"] == max(r["mIoU"] for r in info["val_history"])
    assert [r["iter"] for r in info["val_history"]] == [40, 80]
    assert json.loads((work / "done.json").read_text())["checkpoint"] == info["checkpoint"]


def test_predict_logits_shapes_and_inputs(trained, toy_tiles):
    seg, _ = trained
    tiles, manifest = toy_tiles
    paths = [str(tiles.root / p) for p in manifest["image"][:3]]
    arrays = np.stack([read_image(p) for p in paths])
    logits = seg.predict_logits(arrays)
    assert logits.shape == (3, 3, 32, 32) and logits.dtype == np.float32
    np.testing.assert_allclose(seg.predict_logits(paths), logits, atol=1e-5)
    labels = seg.predict(arrays)
    assert labels.dtype == np.uint8 and labels.shape == (3, 32, 32)
    np.testing.assert_array_equal(labels, logits.argmax(1))
    # a size that is not a multiple of 32 is padded internally and cropped back
    odd = arrays[:, :27, :30]
    assert seg.predict_logits(odd).shape == (3, 3, 27, 30)
    with pytest.raises(DataError, match="different sizes"):
        seg.predict_logits([arrays[0], arrays[0, :20, :20]])
    with pytest.raises(DataError, match="uint8"):
        seg.predict_logits(arrays.astype(np.float32))


def test_save_and_load_pretrained(trained, tmp_path):
    seg, _ = trained
    seg.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.safetensors", "segmenter.json"]
    loaded = Segmenter.from_pretrained(tmp_path / "model", device="cpu")
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.predict_logits(x), seg.predict_logits(x), atol=1e-5)
    assert loaded.registry.names == seg.registry.names
    assert loaded.config == seg.config
    assert loaded.training_info["best_iter"] == seg.training_info["best_iter"]
    with pytest.raises(DataError, match="not a saved Segmenter"):
        Segmenter.from_pretrained(tmp_path)


def test_finished_job_reloads_without_training(trained, toy_tiles, registry):
    from mmengine.hooks import Hook

    class Count(Hook):
        n = 0

        def after_train_iter(self, *args, **kwargs):
            Count.n += 1

    seg, work = trained
    tiles, manifest = toy_tiles
    train, val = manifest_pairs(tiles.root, manifest, "train"), manifest_pairs(tiles.root, manifest, "val")
    again = train_segmenter(tiny_config(), registry, train, val, work, label="again", hooks=[Count()])
    assert Count.n == 0
    assert again.training_info["reloaded"] is True
    x = np.random.default_rng(1).integers(0, 255, (1, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(again.predict_logits(x), seg.predict_logits(x), atol=1e-6)
    # the same folder with other settings is refused instead of silently resumed
    with pytest.raises(ConfigError, match="another training job"):
        train_segmenter(tiny_config(train={"seed": 99}), registry, train, val, work)


@pytest.mark.parametrize("kind", ["unet", "segformer", "pspnet_r50"])
def test_generated_models_build_and_run(registry, kind):
    cfg = SegmenterConfig.from_params({"model": {"type": kind, "base_channels": 8, "embed_dims": 16}})
    model_cfg = build_model_config(cfg, registry)
    seg = Segmenter(build_model(model_cfg), model_cfg, registry, cfg, device="cpu")
    x = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    assert seg.predict_logits(x).shape == (1, registry.num_classes, 64, 64)


def test_comparison_report_pass_loads_finished_segmenters_and_trains_none(toy_tiles, registry, tmp_path):
    from tisynth.segmentation.experiment import BASELINE, run_comparison

    tiles, manifest = toy_tiles
    train, val = manifest_pairs(tiles.root, manifest, "train"), manifest_pairs(tiles.root, manifest, "val")
    evals = {"test": manifest_pairs(tiles.root, manifest, "test")}
    cfg = tiny_config(train={"iterations": 20, "val_interval": 20, "checkpoint_interval": 20})
    first = run_comparison(cfg, registry, train, val, [], evals, tmp_path, seeds=[0], variants=(BASELINE,),
                           track=False)
    assert set(first.results["seed"]) == {0}
    folders = sorted(p.name for p in tmp_path.iterdir())
    report = run_comparison(cfg, registry, train, val, [], evals, tmp_path, seeds=[0, 1], variants=(BASELINE,),
                            track=False, train_missing=False)
    # seed 1 was never trained: skipped, and no work folder was started for it
    assert set(report.results["seed"]) == {0}
    assert sorted(p.name for p in tmp_path.iterdir()) == folders
    pd.testing.assert_frame_equal(report.results, first.results)


def test_ema_weights_are_the_ones_validated_and_kept(toy_tiles, registry, tmp_path):
    from tisynth.segmentation.checkpoint import load_checkpoint_file

    tiles, manifest = toy_tiles
    train = manifest_pairs(tiles.root, manifest, "train")
    val = manifest_pairs(tiles.root, manifest, "val")
    short = {"iterations": 12, "val_interval": 6, "checkpoint_interval": 6, "log_interval": 6}
    plain = train_segmenter(tiny_config(train=short), registry, train, val, tmp_path / "plain", label="plain")
    ema = train_segmenter(tiny_config(train={**short, "ema_momentum": 0.2}), registry, train, val,
                          tmp_path / "ema", label="ema")
    assert plain.training_info["fingerprint"] != ema.training_info["fingerprint"]
    last = load_checkpoint_file(str(tmp_path / "ema" / "iter_12.pth"), map_location="cpu")
    raw = {k[len("module."):]: v for k, v in last["ema_state_dict"].items() if k.startswith("module.")}
    plain_last = load_checkpoint_file(str(tmp_path / "plain" / "iter_12.pth"), map_location="cpu")["state_dict"]
    # the average does not change training: the EMA run's own weights are the plain run's
    for k, v in plain_last.items():
        torch.testing.assert_close(raw[k], v)
    # the checkpoint's model weights are the average, and they differ from the trained weights
    differs = [k for k, v in last["state_dict"].items() if v.is_floating_point() and not torch.equal(v, raw[k])]
    assert differs
    # the kept model is the average of the selected checkpoint, not the raw weights
    kept = ema.model.state_dict()
    chosen = load_checkpoint_file(ema.training_info["checkpoint"], map_location="cpu")["state_dict"]
    for k, v in chosen.items():
        torch.testing.assert_close(kept[k].cpu(), v)


def test_random_sensor_style_restyles_the_image_and_never_the_mask():
    import numpy as np

    from tisynth.segmentation.mm import RandomSensorStyle

    rng = np.random.default_rng(0)
    img = rng.integers(40, 200, size=(32, 32, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, size=(32, 32), dtype=np.uint8)

    def run(prob: float) -> dict:
        np.random.seed(3)
        return RandomSensorStyle(prob, {"gain": [0.5, 0.6], "offset": [0, 0], "haze": [0, 0]}).transform(
            {"img": img.copy(), "gt_seg_map": mask.copy(), "img_path": "a.png"})

    assert np.array_equal(run(0.0)["img"], img)
    out = run(1.0)
    assert out["img"].dtype == np.uint8 and out["img"].shape == img.shape
    assert out["img"].mean() < 0.8 * img.mean()  # gain <= 0.6, no offset, no haze: darker
    assert np.array_equal(out["gt_seg_map"], mask)
    assert np.array_equal(run(1.0)["img"], out["img"])  # numpy's seeded stream decides the style
