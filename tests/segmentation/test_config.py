"""Configs generated from parameters and the class registry."""

from __future__ import annotations

import pytest

from tisynth.classes import IGNORE_INDEX, ClassRegistry
from tisynth.segmentation.config import (
    ConfigError,
    MixConfig,
    SegmenterConfig,
    build_model_config,
    build_runner_config,
    dataset_metainfo,
)


@pytest.fixture()
def five() -> ClassRegistry:
    rows = [
        {"id": 0, "name": "built-up", "color": [255, 0, 0]},
        {"id": 1, "name": "farmland", "color": [0, 255, 0]},
        {"id": 2, "name": "forest", "color": [0, 255, 255]},
        {"id": 3, "name": "meadow", "color": [255, 255, 0]},
        {"id": 4, "name": "water", "color": [0, 0, 255]},
        {"id": 5, "name": "unlabeled", "color": [0, 0, 0]},
    ]
    return ClassRegistry.from_records(rows)


def _heads(model: dict) -> list[dict]:
    heads = [model["decode_head"]]
    aux = model.get("auxiliary_head")
    if aux:
        heads += aux if isinstance(aux, list) else [aux]
    return heads


@pytest.mark.parametrize("kind", ["unet", "segformer", "pspnet_r50"])
def test_model_config_takes_classes_from_registry(five, kind):
    cfg = SegmenterConfig.from_params({"model": {"type": kind}})
    model = build_model_config(cfg, five)
    assert five.num_classes == 5  # "unlabeled" is the ignore id, not a class
    for head in _heads(model):
        assert head["num_classes"] == 5
        assert head["ignore_index"] == IGNORE_INDEX
        assert head["norm_cfg"]["type"] == "BN"  # one device: no SyncBN
    assert model["data_preprocessor"]["seg_pad_val"] == IGNORE_INDEX
    assert model["data_preprocessor"]["bgr_to_rgb"] is False


def test_metainfo_and_val_metric_from_registry(five, tmp_path):
    cfg = SegmenterConfig.from_params({})
    meta = dataset_metainfo(five)
    assert meta["classes"] == ["built-up", "farmland", "forest", "meadow", "water"]
    assert meta["palette"] == [[255, 0, 0], [0, 255, 0], [0, 255, 255], [255, 255, 0], [0, 0, 255]]
    runner = build_runner_config(cfg, five, str(tmp_path), "train.json", "val.json")
    assert runner["train_dataloader"]["dataset"]["metainfo"] == meta
    assert runner["val_dataloader"]["dataset"]["metainfo"] == meta
    assert runner["val_evaluator"]["num_classes"] == 5
    assert runner["val_evaluator"]["class_names"] == meta["classes"]
    # model selection on val, never on test; BN training on one process
    assert runner["default_hooks"]["checkpoint"]["save_best"] == "mIoU"
    assert "test_dataloader" not in runner and "test_evaluator" not in runner
    assert runner["launcher"] == "none"


def test_schedule_optimizer_seed_device_from_parameters(five, tmp_path):
    cfg = SegmenterConfig.from_params({
        "data": {"crop_size": 96},
        "train": {"iterations": 1234, "val_interval": 100, "batch_size": 6, "seed": 7},
        "optimizer": {"type": "SGD", "lr": 0.02, "momentum": 0.8, "weight_decay": 5e-4, "warmup_iters": 10},
    })
    r = build_runner_config(cfg, five, str(tmp_path), "t.json", None)
    assert r["train_cfg"] == {"type": "IterBasedTrainLoop", "max_iters": 1234, "val_interval": 100}
    assert r["train_dataloader"]["batch_size"] == 6
    assert r["randomness"]["seed"] == 7
    assert r["optim_wrapper"]["optimizer"] == {"type": "SGD", "lr": 0.02, "momentum": 0.8, "weight_decay": 5e-4}
    assert [s["type"] for s in r["param_scheduler"]] == ["LinearLR", "PolyLR"]
    assert r["param_scheduler"][1]["end"] == 1234
    crop = [t for t in r["train_dataloader"]["dataset"]["pipeline"] if t["type"] == "RandomCrop"][0]
    assert tuple(crop["crop_size"]) == (96, 96)
    assert "val_dataloader" not in r  # no val pairs: no selection, keep the last checkpoint
    assert "save_best" not in r["default_hooks"]["checkpoint"]


def test_pretrained_backbone_is_optional(five):
    plain = build_model_config(SegmenterConfig.from_params({"model": {"type": "pspnet_r50"}}), five)
    assert "init_cfg" not in plain["backbone"]
    cfg = SegmenterConfig.from_params({"model": {"type": "pspnet_r50", "pretrained": "weights/resnet50_v1c.pth"}})
    model = build_model_config(cfg, five)
    assert model["backbone"]["init_cfg"] == {"type": "Pretrained", "checkpoint": "weights/resnet50_v1c.pth"}
    assert model["backbone"]["type"] == "ResNetV1c" and model["backbone"]["dilations"] == [1, 1, 2, 4]
    assert model["auxiliary_head"]["loss_decode"]["loss_weight"] == 0.4


def test_overrides_are_deep_merged(five):
    cfg = SegmenterConfig.from_params({"model": {"overrides": {"decode_head": {"channels": 99}}}})
    model = build_model_config(cfg, five)
    assert model["decode_head"]["channels"] == 99
    assert model["decode_head"]["num_classes"] == 5  # untouched siblings survive


@pytest.mark.parametrize(
    "params, match",
    [
        ({"model": {"typo": 1}}, r"segmenter\.model: unknown key"),
        ({"model": {"type": "deeplab"}}, "not one of"),
        ({"optimizer": {"policy": "step"}}, "policy"),
        ({"train": {"iterations": 0}}, "iterations"),
        ({"extra": {}}, "unknown section"),
    ],
)
def test_bad_parameters_name_the_key(params, match):
    with pytest.raises(ConfigError, match=match):
        SegmenterConfig.from_params(params)


def test_config_round_trip_and_replace():
    cfg = SegmenterConfig.from_params({"train": {"seed": 3}})
    assert SegmenterConfig.from_params(cfg.to_dict()) == cfg
    assert cfg.replace(train={"seed": 5}).train.seed == 5
    assert cfg.train.seed == 3


def test_mixing_budgets(five, tmp_path):
    cfg = SegmenterConfig.from_params({"train": {"iterations": 200, "batch_size": 8}})
    equal = MixConfig.from_params({"mode": "equal_budget", "real_fraction": 0.75})
    paper = MixConfig.from_params({"mode": "paper"})
    assert equal.iterations(200) == 200
    assert paper.iterations(200) == 600
    r = build_runner_config(cfg, five, str(tmp_path), "r.json", "v.json", "s.json", equal)
    assert r["train_dataloader"]["sampler"] == {"type": "MixedSourceSampler", "batch_size": 8, "real_fraction": 0.75}
    sources = [d["source"] for d in r["train_dataloader"]["dataset"]["datasets"]]
    assert sources == ["real", "synthetic"]
    r = build_runner_config(cfg, five, str(tmp_path), "r.json", "v.json", "s.json", paper, paper.iterations(200))
    real, synthetic = r["train_dataloader"]["dataset"]["datasets"]
    assert real["type"] == "RepeatDataset" and real["times"] == 10 and synthetic["source"] == "synthetic"
    assert r["train_cfg"]["max_iters"] == 600
    with pytest.raises(ConfigError):
        MixConfig.from_params({"mode": "paper", "real_fraction": 0.5})


@pytest.mark.parametrize("variant, channels", [("lite0", [24, 40, 112, 320]), ("lite2", [24, 48, 120, 352])])
def test_efficientnet_lite_model_config(five, variant, channels):
    cfg = SegmenterConfig.from_params({"model": {"type": "efficientnet_lite", "variant": variant}})
    model = build_model_config(cfg, five)
    backbone, head = model["backbone"], model["decode_head"]
    assert backbone["type"] == "EfficientNetLite" and backbone["variant"] == variant
    assert backbone["out_indices"] == [1, 2, 4, 6] and backbone["pretrained"] is True
    assert "init_cfg" not in backbone
    assert head["type"] == "SegformerHead" and head["in_channels"] == channels and head["in_index"] == [0, 1, 2, 3]
    assert head["channels"] == cfg.model.head_channels
    assert head["num_classes"] == 5 and head["ignore_index"] == IGNORE_INDEX
    assert "auxiliary_head" not in model
    # the encoder's normalisation, (x - 127) / 128 of RGB, replaces the ImageNet defaults for
    # training (data preprocessor) and inference (Segmenter reads config.data) alike
    assert cfg.data.mean == (127.0,) * 3 and cfg.data.std == (128.0,) * 3
    assert model["data_preprocessor"]["mean"] == [127.0] * 3 and model["data_preprocessor"]["std"] == [128.0] * 3
    assert model["data_preprocessor"]["bgr_to_rgb"] is False


def test_efficientnet_lite_pretrained_and_normalisation_choices(five):
    own = SegmenterConfig.from_params({"model": {"type": "efficientnet_lite", "pretrained": "w/enc.pth"},
                                       "data": {"mean": [0, 0, 0], "std": [255, 255, 255]}})
    backbone = build_model_config(own, five)["backbone"]
    assert backbone["pretrained"] is False  # a checkpoint of one's own replaces the ImageNet weights
    assert backbone["init_cfg"] == {"type": "Pretrained", "checkpoint": "w/enc.pth"}
    assert own.data.mean == (0.0, 0.0, 0.0)  # and may come with its own normalisation
    with pytest.raises(ConfigError, match=r"segmenter\.data\.mean.*127"):
        SegmenterConfig.from_params({"model": {"type": "efficientnet_lite"}, "data": {"mean": [0, 0, 0]}})
    with pytest.raises(ConfigError, match=r"segmenter\.model\.variant"):
        SegmenterConfig.from_params({"model": {"type": "efficientnet_lite", "variant": "lite1"}})
    aux = build_model_config(SegmenterConfig.from_params(
        {"model": {"type": "efficientnet_lite", "variant": "lite2", "auxiliary_head": True}}), five)
    assert aux["auxiliary_head"]["in_channels"] == 120 and aux["auxiliary_head"]["in_index"] == 2


def test_new_model_keys_keep_existing_fingerprints():
    # to_dict() feeds the job fingerprints that name work folders: a key added later must not
    # appear while it holds its default, or every existing job would be trained again
    before = ["type", "base_channels", "num_stages", "embed_dims", "num_layers", "head_channels", "dropout",
              "auxiliary_head", "pretrained", "sync_bn", "loss_avg_non_ignore", "overrides"]
    for kind in ("segformer", "unet", "pspnet_r50"):
        cfg = SegmenterConfig.from_params({"model": {"type": kind}})
        assert list(cfg.to_dict()["model"]) == before
        assert cfg.data.mean == (123.675, 116.28, 103.53)  # other model types keep their normalisation
    lite2 = SegmenterConfig.from_params({"model": {"type": "efficientnet_lite", "variant": "lite2"}})
    assert lite2.to_dict()["model"]["variant"] == "lite2"
    assert SegmenterConfig.from_params(lite2.to_dict()) == lite2


def test_sensor_style_augmentation_is_off_by_default_and_keeps_fingerprints():
    cfg = SegmenterConfig.from_params({})
    assert cfg.data.style_augment == 0.0
    data = cfg.to_dict()["data"]
    assert "style_augment" not in data and "style_family" not in data  # existing jobs keep their folders
    from tisynth.segmentation.config import train_pipeline

    assert all(step["type"] != "RandomSensorStyle" for step in train_pipeline(cfg, 5))
    on = SegmenterConfig.from_params({"data": {"style_augment": 0.5, "style_family": {"gamma": [0.8, 1.4]}}})
    assert on.to_dict()["data"]["style_family"] == {"gamma": [0.8, 1.4]}
    assert SegmenterConfig.from_params(on.to_dict()) == on
    assert SegmenterConfig.from_params({"data": {"style_family": None}}).to_dict() == cfg.to_dict()  # empty YAML value
    step = [s for s in train_pipeline(on, 5) if s["type"] == "RandomSensorStyle"]
    assert step == [{"type": "RandomSensorStyle", "prob": 0.5, "family": {"gamma": [0.8, 1.4]}}]


@pytest.mark.parametrize(
    "data, match",
    [
        ({"style_augment": 1.5}, r"segmenter\.data\.style_augment"),
        ({"style_augment": "often"}, r"segmenter\.data\.style_augment: a probability"),
        ({"style_augment": None}, r"segmenter\.data\.style_augment: a probability"),
        ({"style_augment": 0.5, "style_family": {"gamma": [1.4, 0.8]}}, r"segmenter\.data\.style_family\.gamma.*interval"),
        ({"style_augment": 0.5, "style_family": {"tint": [0, 1]}}, r"segmenter\.data\.style_family: unknown key"),
    ],
)
def test_bad_sensor_style_settings_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        SegmenterConfig.from_params({"data": data})
