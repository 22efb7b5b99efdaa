"""Experiments built on :func:`~tisynth.segmentation.train.train_segmenter`.

* :func:`train_real_segmenter` — the real-only segmenter of the filter step (train split,
  model selection on val), in a nested MLflow run when one is active.
* :func:`run_comparison` — real-only (``baseline``) vs real + synthetic (``augmented``) with the
  same settings and seed, for one or more seeds; each trained segmenter is evaluated once on
  every evaluation set (a mapping name → pairs, e.g. ``{"test": ...}``) after training ends.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tisynth.classes import ClassRegistry
from tisynth.io import DataError, TileSet
from tisynth.segmentation import tracking
from tisynth.segmentation.config import MixConfig, SegmenterConfig
from tisynth.segmentation.metrics import SegmentationMetrics
from tisynth.segmentation.pairs import Pair, pairs_from_manifest
from tisynth.segmentation.segmenter import Segmenter
from tisynth.segmentation.train import segmenter_finished, train_segmenter, work_dir_for

log = logging.getLogger("tisynth.segmentation")

BASELINE = "baseline"
AUGMENTED = "augmented"


def _run_params(config: SegmenterConfig, registry: ClassRegistry, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {"segmenter": config.to_dict(), "num_classes": registry.num_classes,
            "classes": ",".join(registry.names), **extra}


REAL_ONLY_JOB = "real_only"
REAL_SYNTHETIC_JOB = "real_synthetic"


def _log_training(info: Mapping[str, Any]) -> None:
    """Training summary to the active child run; the val curve too when the job was reloaded
    (a finished job found in its work folder logs nothing while it is loaded)."""
    tracking.log_metrics(_training_metrics(info))
    if info.get("reloaded"):
        for rec in info.get("val_history") or []:
            tracking.log_metrics({f"val.{k}": v for k, v in rec.items() if k != "iter"}, step=int(rec["iter"]))


def _training_metrics(info: Mapping[str, Any]) -> dict[str, float]:
    out = {"train.best_iter": info.get("best_iter"), "train.iterations": info.get("iterations"),
           "train.seconds_last_session": info.get("seconds_last_session")}
    if info.get("best_val_mIoU") is not None:
        out["val.best_mIoU"] = info["best_val_mIoU"]
    return {k: float(v) for k, v in out.items() if v is not None}


def train_real_segmenter(
    tiles: TileSet | str | Path,
    tile_manifest: pd.DataFrame,
    registry: ClassRegistry,
    config: SegmenterConfig | Mapping[str, Any],
    work_root: str | Path,
    train_split: str = "train",
    val_split: str | None = "val",
    name: str = "real_segmenter",
    track: bool = True,
) -> Segmenter:
    """Train the real-only segmenter on the real training tiles, selected on val.

    This is the single entry point the filter pipeline uses; swap it to plug in another
    real-only segmenter.
    """
    config = SegmenterConfig.from_params(config)
    train = pairs_from_manifest(tile_manifest, tiles, train_split)
    val = pairs_from_manifest(tile_manifest, tiles, val_split) if val_split else []
    if not train:
        raise DataError(f"tile_manifest: no tiles in split {train_split!r}; cannot train the real-only segmenter")
    if not val:
        log.warning("%s: no %r tiles; keeping the last checkpoint instead of selecting on val", name, val_split)
    work_dir = work_dir_for(work_root, REAL_ONLY_JOB, config, registry, train, val)
    params = _run_params(config, registry, {"variant": "real_only", "n_train": len(train), "n_val": len(val)})
    tags = {"role": "filter_segmenter", "variant": "real_only", "seed": str(config.train.seed)}
    with tracking.child_run(name, params, tags, enabled=track):
        segmenter = train_segmenter(config, registry, train, val, work_dir, label=name)
        _log_training(segmenter.training_info)
    return segmenter


@dataclass
class ComparisonResult:
    """Outcome of :func:`run_comparison`.

    Attributes:
        results: long table ``variant, seed, eval_set, metric, class, value`` (fractions).
        confusions: long table ``variant, seed, eval_set, truth, prediction, pixels``.
        segmenters: the first seed's segmenter per variant.
        training: one row per trained segmenter (variant, seed, best iter, val mIoU, ...).
        run_ids: MLflow child run id per (variant, seed), when tracked.
    """

    results: pd.DataFrame
    confusions: pd.DataFrame
    segmenters: dict[str, Segmenter] = field(default_factory=dict)
    training: pd.DataFrame = field(default_factory=pd.DataFrame)
    run_ids: dict[str, str] = field(default_factory=dict)


def metrics_rows(variant: str, seed: int, eval_set: str, metrics: SegmentationMetrics) -> list[dict[str, Any]]:
    """Long-format result rows of one evaluation."""
    rows = [{"variant": variant, "seed": seed, "eval_set": eval_set, "metric": k, "class": "", "value": v}
            for k, v in metrics.summary().items()]
    for rec in metrics.per_class():
        for metric in ("IoU", "Acc"):
            rows.append({"variant": variant, "seed": seed, "eval_set": eval_set, "metric": metric,
                         "class": rec["class"], "value": rec[metric]})
    return rows


def confusion_rows(variant: str, seed: int, eval_set: str, matrix: np.ndarray) -> list[dict[str, Any]]:
    """Long-format confusion rows (non-zero cells only)."""
    t, p = np.nonzero(matrix)
    return [{"variant": variant, "seed": seed, "eval_set": eval_set, "truth": int(i), "prediction": int(j),
             "pixels": int(matrix[i, j])} for i, j in zip(t, p)]


def run_comparison(
    config: SegmenterConfig | Mapping[str, Any],
    registry: ClassRegistry,
    train_pairs: Sequence[Pair],
    val_pairs: Sequence[Pair],
    synthetic_pairs: Sequence[Pair],
    eval_sets: Mapping[str, Sequence[Pair]],
    work_root: str | Path,
    mix: MixConfig | Mapping[str, Any] | None = None,
    seeds: Sequence[int] = (0,),
    variants: Sequence[str] = (BASELINE, AUGMENTED),
    track: bool = True,
    train_missing: bool = True,
) -> ComparisonResult:
    """Train real-only and real + synthetic segmenters per seed and evaluate each once.

    Both variants share every setting and the seed; ``mix`` decides how synthetic pairs enter
    (``equal_budget`` keeps the iteration count). Model selection uses ``val_pairs`` only;
    ``eval_sets`` are touched once per trained model, after its training ended.
    With ``train_missing=False`` only segmenters whose training already finished are loaded and
    evaluated; the other (seed, variant) pairs are skipped (a report over work done so far).
    """
    config = SegmenterConfig.from_params(config)
    mix_cfg = MixConfig.from_params(mix)
    unknown = [v for v in variants if v not in (BASELINE, AUGMENTED)]
    if unknown:
        raise ValueError(f"run_comparison: unknown variant(s) {unknown}; use {BASELINE!r} and/or {AUGMENTED!r}")
    if AUGMENTED in variants and not synthetic_pairs:
        raise DataError("run_comparison: no kept synthetic pairs for the augmented segmenter "
                        "(check the filter pipeline's kept pairs, or its resampling thresholds)")
    if not eval_sets:
        raise DataError("run_comparison: no evaluation set")
    results: list[dict[str, Any]] = []
    confusions: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    segmenters: dict[str, Segmenter] = {}
    run_ids: dict[str, str] = {}
    for seed in seeds:
        cfg = config.replace(train={"seed": int(seed)})
        for variant in variants:
            synthetic = list(synthetic_pairs) if variant == AUGMENTED else None
            mix_used = mix_cfg if variant == AUGMENTED else None
            name = f"{variant}-seed{seed}"
            job = REAL_SYNTHETIC_JOB if variant == AUGMENTED else REAL_ONLY_JOB
            work_dir = work_dir_for(work_root, job, cfg, registry, train_pairs, val_pairs, synthetic, mix_used)
            if not train_missing and not segmenter_finished(work_dir):
                log.info("[%s] not trained yet; skipped (train_missing=False)", name)
                continue
            extra = {"variant": variant, "seed": int(seed), "n_train_real": len(train_pairs),
                     "n_train_synthetic": len(synthetic or []), "n_val": len(val_pairs),
                     "mix": vars(mix_used) if mix_used else "none",
                     "iterations": mix_cfg.iterations(cfg.train.iterations) if mix_used else cfg.train.iterations}
            tags = {"role": "compared_segmenter", "variant": variant, "seed": str(seed)}
            with tracking.child_run(name, _run_params(cfg, registry, extra), tags, enabled=track) as run_id:
                seg = train_segmenter(cfg, registry, train_pairs, val_pairs, work_dir, synthetic, mix_used, label=name)
                _log_training(seg.training_info)
                for eval_name, pairs in eval_sets.items():
                    metrics = seg.evaluate(pairs)
                    flat = {f"{eval_name}.{k}": v for k, v in metrics.to_dict().items()}
                    tracking.log_metrics(flat)
                    results += metrics_rows(variant, int(seed), eval_name, metrics)
                    confusions += confusion_rows(variant, int(seed), eval_name, metrics.confusion)
                    log.info("[%s] %s: OA %.4f mIoU %.4f mAcc %.4f", name, eval_name, metrics.oa, metrics.miou,
                             metrics.macc)
            if run_id:
                run_ids[name] = run_id
            info = seg.training_info
            training.append({"variant": variant, "seed": int(seed), "iterations": info.get("iterations"),
                             "best_iter": info.get("best_iter"), "best_val_mIoU": info.get("best_val_mIoU"),
                             "n_train_real": len(train_pairs), "n_train_synthetic": len(synthetic or []),
                             "work_dir": info.get("work_dir")})
            if variant not in segmenters:
                segmenters[variant] = seg
    return ComparisonResult(
        pd.DataFrame(results, columns=["variant", "seed", "eval_set", "metric", "class", "value"]),
        pd.DataFrame(confusions, columns=["variant", "seed", "eval_set", "truth", "prediction", "pixels"]),
        segmenters,
        pd.DataFrame(training),
        run_ids,
    )
