"""Segmentation through mmsegmentation: configs from parameters, training, inference, evaluation.

Public API (imported lazily, so that importing the package does not import mmseg):

* settings: :class:`SegmenterConfig` (model / data / train / optimizer / inference blocks),
  :class:`MixConfig`, :func:`build_model_config`, :func:`build_runner_config`;
* data: :class:`Pair`, :func:`pairs_from_manifest`, :func:`synthetic_pairs_from_manifest`;
* training: :func:`train_segmenter`, :func:`train_real_segmenter`, :func:`run_comparison`;
* inference: :class:`Segmenter` (``predict_logits``, ``predict``, ``evaluate``,
  ``save_pretrained`` / ``from_pretrained``);
* checkpoints: :func:`load_checkpoint_file`, :func:`register_safe_checkpoint_loader`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SegmenterConfig": "config",
    "ModelConfig": "config",
    "DataConfig": "config",
    "TrainConfig": "config",
    "OptimizerConfig": "config",
    "InferenceConfig": "config",
    "MixConfig": "config",
    "ConfigError": "config",
    "build_model_config": "config",
    "build_runner_config": "config",
    "Pair": "pairs",
    "pairs_from_manifest": "pairs",
    "synthetic_pairs_from_manifest": "pairs",
    "read_index_mask": "pairs",
    "Segmenter": "segmenter",
    "train_segmenter": "train",
    "work_dir_for": "train",
    "train_real_segmenter": "experiment",
    "run_comparison": "experiment",
    "ComparisonResult": "experiment",
    "load_checkpoint_file": "checkpoint",
    "register_safe_checkpoint_loader": "checkpoint",
    "CheckpointError": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tisynth.segmentation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tisynth.segmentation.{module}"), name)


def __dir__() -> list[str]:
    return __all__
