"""Nodes of the ``filter`` pipeline (thin: the work is in tisynth.filtering and tisynth.segmentation)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tisynth import filtering
from tisynth.classes import ClassRegistry
from tisynth.io import TileSet, read_image
from tisynth.segmentation import experiment, report
from tisynth.segmentation.pairs import pairs_from_manifest, read_index_mask
from tisynth.segmentation.segmenter import Segmenter

log = logging.getLogger(__name__)


def train_real_segmenter(
    tiles: TileSet, tile_manifest: pd.DataFrame, class_registry: ClassRegistry, segmenter: dict[str, Any],
    work_root: str, params: dict[str, Any],
) -> Segmenter:
    """Real-only segmenter on the train split, selected on val (nested MLflow run)."""
    cfg = filtering.FilterSettings.from_params(params)
    return experiment.train_real_segmenter(
        tiles, tile_manifest, class_registry, segmenter, work_root,
        train_split=cfg.train_split, val_split=cfg.val_split, name="real_segmenter", track=cfg.mlflow,
    )


def compute_class_losses(
    real_segmenter: Segmenter, tiles: TileSet, tile_manifest: pd.DataFrame, params: dict[str, Any]
) -> pd.DataFrame:
    """Class-wise mean cross-entropy ``mu_c`` on the real training tiles."""
    cfg = filtering.FilterSettings.from_params(params)
    pairs = pairs_from_manifest(tile_manifest, tiles, cfg.train_split)
    return filtering.compute_class_losses(real_segmenter, pairs, cfg.batch_size)


def select_hard_classes(
    real_segmenter: Segmenter, tiles: TileSet, tile_manifest: pd.DataFrame, class_registry: ClassRegistry,
    params: dict[str, Any],
) -> tuple[pd.DataFrame, list[str]]:
    """Per-class val IoU of the real-only segmenter, and the hard classes (names)."""
    cfg = filtering.FilterSettings.from_params(params)
    val_split = cfg.val_split
    pairs = pairs_from_manifest(tile_manifest, tiles, val_split) if val_split else []
    spec = cfg.hard_classes
    if pairs:
        metrics = real_segmenter.evaluate(pairs, cfg.batch_size)
        table = pd.DataFrame(metrics.per_class())
        iou = metrics.iou
    else:
        table = pd.DataFrame(columns=["class_index", "class", "IoU", "Acc", "truth_pixels", "predicted_pixels"])
        iou = None
    hard = filtering.select_hard_classes(spec, class_registry, iou, cfg.auto_hard_k)
    names = [class_registry.names[i] for i in hard]
    table["hard"] = [name in names for name in table["class"]] if len(table) else []
    log.info("hard classes (%s): %s", spec, names or "none")
    return table, names


def filter_synthetic_masks(
    real_segmenter: Segmenter,
    synthetic_images: TileSet,
    synthetic_manifest: pd.DataFrame,
    tiles: TileSet,
    class_losses: pd.DataFrame,
    params: dict[str, Any],
) -> Callable[[Path], dict[str, int]]:
    """Writer for ``filtered_synthetic``: ``masks/<synthetic name>.png``, resumable."""
    items = filtering.synthetic_items(synthetic_manifest, synthetic_images, tiles)
    mu = filtering.class_losses_array(class_losses, real_segmenter.num_classes)
    cfg = filtering.FilterSettings.from_params(params)
    tolerance, batch_size = cfg.tolerance, cfg.batch_size

    def writer(folder: Path) -> dict[str, int]:
        return filtering.filter_synthetic_set(real_segmenter, items, mu, folder, tolerance, batch_size)

    return writer


def resample_synthetic(
    filtered_synthetic: TileSet,
    synthetic_images: TileSet,
    synthetic_manifest: pd.DataFrame,
    tiles: TileSet,
    class_registry: ClassRegistry,
    hard_classes: list[str],
    params: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Keep/drop decision per synthetic pair; statistics table and MLflow metrics."""
    items = filtering.synthetic_items(synthetic_manifest, synthetic_images, tiles)
    hard = filtering.select_hard_classes(hard_classes, class_registry)
    manifest, stats, summary = filtering.resample_filtered_set(
        synthetic_manifest, items, filtered_synthetic.root, class_registry, hard,
        filtering.FilterSettings.from_params(params).min_kept_fraction,
    )
    log.info("resampling kept %d of %d synthetic pairs (%.1f%% of synthetic labelled pixels ignored)",
             int(summary["kept_pairs"]), int(summary["synthetic_pairs"]), 100 * summary["ignored_fraction"]
             if np.isfinite(summary["ignored_fraction"]) else float("nan"))
    return manifest, stats, filtering.filter_metrics(summary, stats)


def plot_filter_examples(
    filtered_manifest: pd.DataFrame,
    synthetic_images: TileSet,
    filtered_synthetic: TileSet,
    tiles: TileSet,
    class_registry: ClassRegistry,
    params: dict[str, Any],
) -> Figure:
    """Figure: synthetic image | mask | filtered mask for a few pairs (most filtered first, then kept)."""
    n = filtering.FilterSettings.from_params(params).examples
    k = class_registry.num_classes
    ordered = filtered_manifest.sort_values("kept_fraction", kind="stable")
    half = max(1, n // 2)
    picks = pd.concat([ordered.head(half), ordered.tail(n - half)]).drop_duplicates("name").head(n)
    examples = []
    for _, row in picks.iterrows():
        examples.append((
            str(row["name"]),
            read_image(synthetic_images.path(row["image"])),
            read_index_mask(tiles.path(row["mask"]), k),
            read_index_mask(filtered_synthetic.path(row["filtered_mask"]), k),
            bool(row["kept"]),
            float(row["kept_fraction"]),
        ))
    return report.plot_filter_examples(examples, class_registry)

