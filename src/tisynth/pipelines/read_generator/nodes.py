"""Thin node of the ``read_generator`` pipeline; the logic is in :mod:`tisynth.generator.reading`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from tisynth.generator import reading
from tisynth.io import TileSet
from tisynth.segmentation.segmenter import Segmenter

log = logging.getLogger(__name__)


def read_generator_images(
    real_segmenter: Segmenter, generator: Any, tiles: TileSet, tile_manifest: pd.DataFrame, params: dict[str, Any],
    sample: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The real-only segmenter's reading of images sampled for held-out masks, per guidance scale
    (:mod:`tisynth.generator.reading`): a table and MLflow metrics ``reading.<what>_g<scale>``."""
    cfg = reading.ReadingSettings.from_params(params, sample.get("sampler"))
    if cfg.tiles == 0:
        log.info("generator reading skipped (read_generator.tiles: 0)")
        return pd.DataFrame(), {}
    table = reading.read_generator(generator, real_segmenter, tiles, tile_manifest, cfg)
    for _, r in table.iterrows():
        log.info("segmenter reading of %s (guidance %s, %d %s masks): mIoU %.1f, OA %.1f, dominant class %.1f %%, "
                 "multi-class mIoU %.1f", r["mode"], r["guidance"], r["tiles"], cfg.split, 100 * r["mIoU"], 100 * r["OA"],
                 100 * r["dominant_acc"], 100 * r["multi_mIoU"])
    metrics = {}
    for _, r in table.iterrows():
        tag = "real" if r["mode"] == "real" else f"g{r['guidance']:g}"
        for key in ("mIoU", "OA", "dominant_acc", "multi_mIoU"):
            if np.isfinite(r[key]):
                metrics[f"{key}_{tag}"] = {"value": float(r[key]), "step": 0}
    return table, metrics


def report_ref_steering(
    generator: Any, tiles: TileSet, tile_manifest: pd.DataFrame, target_tiles: TileSet | None,
    target_manifest: pd.DataFrame | None, params: dict[str, Any], sample: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any], Any]:
    """Does the Ref steer the look? (:mod:`tisynth.generator.steering`): a table, MLflow metrics
    ``steering.<what>`` and a figure mask | source-Ref sample | target-Ref sample | Ref."""
    from tisynth.generator import steering
    from tisynth.plots import plt

    cfg = steering.SteeringSettings.from_params(params)
    if cfg.masks == 0:
        log.info("Ref-steering report skipped (ref_steering.masks: 0)")
        fig = plt.figure(figsize=(2, 1))
        return pd.DataFrame(), {}, fig
    inputs = steering.choose_inputs(tiles, tile_manifest, target_tiles, target_manifest, cfg)
    metrics, images = steering.ref_steering(generator, inputs, cfg, sample.get("sampler"), moments=sample.get("ref_moments"))
    log.info("Ref steering (%d masks, Refs %s vs %s): Ref effect %.2f grey levels = %.2f x the seed effect (the real "
             "colour shift would give %.2f x); colour transfer %.0f %%; KID target-Ref images vs real target %s "
             "(source-Ref images %s)", len(inputs.names),
             inputs.source_label, inputs.target_label, metrics["ref_effect"], metrics.get("ref_over_seed", float("nan")),
             metrics.get("ref_over_seed_at_real_shift", float("nan")),
             100 * metrics["colour_transfer"], f"{metrics.get('kid_target_refs_vs_real_target', float('nan')):.4f}",
             f"{metrics.get('kid_source_refs_vs_real_target', float('nan')):.4f}")
    table = steering.metrics_table(metrics, f"{inputs.source_label} vs {inputs.target_label}")
    tracked = {k: {"value": float(v), "step": 0} for k, v in metrics.items() if np.isfinite(v)}
    return table, tracked, steering.steering_figure(generator, inputs, images, metrics, cfg.figure_rows)
