"""Nodes of the ``segment`` pipeline (thin: the work is in tisynth.segmentation and tisynth.segmentation.report)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from tisynth.classes import ClassRegistry
from tisynth.io import TileSet, read_image
from tisynth.segmentation import report
from tisynth.segmentation.config import SegmentSettings
from tisynth.segmentation.experiment import AUGMENTED, BASELINE, run_comparison
from tisynth.segmentation.pairs import Pair, pairs_from_manifest, read_index_mask, synthetic_pairs_from_manifest
from tisynth.segmentation.segmenter import Segmenter

log = logging.getLogger(__name__)


def prepare_segment_data(
    tiles: TileSet,
    tile_manifest: pd.DataFrame,
    synthetic_images: TileSet,
    filtered_synthetic: TileSet,
    filtered_manifest: pd.DataFrame,
    target_tiles: TileSet,
    target_manifest: pd.DataFrame,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Pairs for training (real train, kept synthetic), model selection (val) and evaluation sets.

    ``eval_sets`` maps an evaluation-set name to a split of ``tile_manifest``. With a labelled
    target domain, its test tiles (all its labelled tiles when it has no split file) are a second
    evaluation set, named by ``target_eval_set``.
    """
    cfg = SegmentSettings.from_params(params)
    data = {
        "train": pairs_from_manifest(tile_manifest, tiles, cfg.train_split),
        "val": pairs_from_manifest(tile_manifest, tiles, cfg.val_split) if cfg.val_split else [],
        "synthetic": synthetic_pairs_from_manifest(filtered_manifest, synthetic_images, filtered_synthetic),
        "eval_sets": {name: pairs_from_manifest(tile_manifest, tiles, split) for name, split in cfg.eval_sets.items()},
    }
    target_name = cfg.target_eval_set
    if len(target_manifest) and target_manifest["mask"].notna().any() and target_name:
        data["eval_sets"][target_name] = pairs_from_manifest(target_manifest, target_tiles, "test")
    log.info("segment data: %d real train, %d kept synthetic, %d val, eval sets %s", len(data["train"]),
             len(data["synthetic"]), len(data["val"]), {k: len(v) for k, v in data["eval_sets"].items()})
    return data


def train_and_evaluate_segmenters(
    segment_data: dict[str, Any], class_registry: ClassRegistry, segmenter: dict[str, Any], work_root: str,
    params: dict[str, Any],
) -> tuple[Segmenter, Segmenter, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Baseline (real only) and augmented (real + synthetic) segmenters per seed, each evaluated once.

    Returns the first seed's two segmenters, the long results table, the long confusion table
    and one row per trained segmenter.
    """
    cfg = SegmentSettings.from_params(params)
    result = run_comparison(
        segmenter, class_registry, segment_data["train"], segment_data["val"],
        segment_data["synthetic"], segment_data["eval_sets"], work_root, cfg.mix,
        seeds=list(cfg.seeds), track=cfg.mlflow,
    )
    return (result.segmenters[BASELINE], result.segmenters[AUGMENTED], result.results, result.confusions,
            result.training)


def build_segment_report(
    segment_results: pd.DataFrame,
    segment_confusions: pd.DataFrame,
    segment_training: pd.DataFrame,
    class_registry: ClassRegistry,
    params: dict[str, Any],
) -> tuple[pd.DataFrame, str, Figure, Figure, dict[str, Any]]:
    """Comparison table (CSV + Markdown), per-class IoU chart, confusion matrices, MLflow metrics."""
    table = report.comparison_table(segment_results)
    per_class = report.per_class_table(segment_results, "IoU")
    mix = SegmentSettings.from_params(params).mix
    iters = segment_training.groupby("variant")["iterations"].first().to_dict() if len(segment_training) else {}
    notes = [
        f"mixing: {mix.mode}" + (f", real fraction per batch {mix.real_fraction}" if mix.real_fraction else ""),
        "iterations: " + ", ".join(f"{k} {v}" for k, v in iters.items()),
        "checkpoints selected on the val split (best mIoU); evaluation sets used once per model",
    ]
    markdown = report.comparison_markdown(table, per_class, notes=notes)
    k = class_registry.num_classes
    matrices = {}
    for (variant, eval_set) in segment_confusions[["variant", "eval_set"]].drop_duplicates().itertuples(index=False):
        matrices[f"{eval_set} / {variant} (all seeds)"] = report.confusion_from_long(
            segment_confusions, k, variant=variant, eval_set=eval_set)
    return (table, markdown, report.plot_per_class_iou(segment_results, class_registry),
            report.plot_confusion_matrices(matrices, class_registry), report.comparison_metrics(table))


def plot_segment_predictions(
    baseline_segmenter: Segmenter,
    augmented_segmenter: Segmenter,
    segment_data: dict[str, Any],
    class_registry: ClassRegistry,
    params: dict[str, Any],
) -> Figure:
    """Image | truth | baseline | augmented for a few tiles of the first evaluation set."""
    n = SegmentSettings.from_params(params).examples
    eval_name, pairs = next(iter(segment_data["eval_sets"].items()))
    chosen: list[Pair] = list(pairs)[:: max(1, len(pairs) // max(1, n))][:n]
    images = [read_image(p.image) for p in chosen]
    truths = [read_index_mask(p.mask, class_registry.num_classes) for p in chosen]
    preds = {BASELINE: [baseline_segmenter.predict(img)[0] for img in images],
             AUGMENTED: [augmented_segmenter.predict(img)[0] for img in images]}
    names = [f"{eval_name}: {p.image.rsplit('/', 1)[-1]}" for p in chosen]
    return report.plot_prediction_examples(images, truths, preds, class_registry, names)
