"""Nodes of the ``filter`` pipeline (thin: the work is in tisynth.filtering and tisynth.segmentation)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tisynth import filtering, report
from tisynth.classes import ClassRegistry
from tisynth.io import TileSet, read_image
from tisynth.segmentation import experiment
from tisynth.segmentation.pairs import pairs_from_manifest, read_index_mask
from tisynth.segmentation.segmenter import Segmenter

log = logging.getLogger(__name__)


def train_real_segmenter(
    tiles: TileSet, tile_manifest: pd.DataFrame, class_registry: ClassRegistry, segmenter: dict[str, Any],
    params: dict[str, Any],
) -> Segmenter:
    """Real-only segmenter on the train split, selected on val (nested MLflow run)."""
    return experiment.train_real_segmenter(
        tiles, tile_manifest, class_registry, segmenter, params["work_root"],
        train_split=params.get("train_split", "train"), val_split=params.get("val_split", "val"),
        name="real_segmenter", track=params.get("mlflow", True),
    )


def compute_class_losses(
    real_segmenter: Segmenter, tiles: TileSet, tile_manifest: pd.DataFrame, params: dict[str, Any]
) -> pd.DataFrame:
    """Class-wise mean cross-entropy ``mu_c`` on the real training tiles."""
    pairs = pairs_from_manifest(tile_manifest, tiles, params.get("train_split", "train"))
    return filtering.compute_class_losses(real_segmenter, pairs, params.get("batch_size"))


def select_hard_classes(
    real_segmenter: Segmenter, tiles: TileSet, tile_manifest: pd.DataFrame, class_registry: ClassRegistry,
    params: dict[str, Any],
) -> tuple[pd.DataFrame, list[str]]:
    """Per-class val IoU of the real-only segmenter, and the hard classes (names)."""
    val_split = params.get("val_split", "val")
    pairs = pairs_from_manifest(tile_manifest, tiles, val_split) if val_split else []
    spec = params.get("hard_classes", "auto")
    if pairs:
        metrics = real_segmenter.evaluate(pairs, params.get("batch_size"))
        table = pd.DataFrame(metrics.per_class())
        iou = metrics.iou
    else:
        table = pd.DataFrame(columns=["class_index", "class", "IoU", "Acc", "truth_pixels", "predicted_pixels"])
        iou = None
    hard = filtering.select_hard_classes(spec, class_registry, iou, int(params.get("auto_hard_k", 1)))
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
    tolerance = float(params.get("tolerance", 1.25))
    batch_size = params.get("batch_size")

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
        float(params.get("min_kept_fraction", 0.8)),
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
    n = int(params.get("examples", 6))
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

