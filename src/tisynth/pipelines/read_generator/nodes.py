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
