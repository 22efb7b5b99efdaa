"""Thin nodes of the ``references`` pipeline; the logic is in :mod:`tisynth.references` and
:mod:`tisynth.generator.augment`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from tisynth import references
from tisynth.io import TileSet
from tisynth.plots import image_grid

log = logging.getLogger(__name__)


def build_ref_pool(manifest: pd.DataFrame, target_manifest: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Refs from the target domain when there is one, else from the source's own tiles."""
    pool_cfg = params.get("pool") or {}
    if len(target_manifest):
        splits = pool_cfg.get("target_splits") or references.target_pool_splits(target_manifest)
        pool = references.build_pool(target_manifest, splits, "target")
    else:
        pool = references.build_pool(manifest, pool_cfg.get("splits"), "source")
    log.info("Ref pool: %d %s tiles", len(pool), pool["ref_domain"].iloc[0])
    return pool


def plan_synthesis(manifest: pd.DataFrame, pool: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    cfg = references.PairingConfig.from_params(params)
    if cfg.strategy == "same" and (pool["ref_domain"] == "target").all():
        raise references.DataError("pairing 'same' pairs a mask with its own image; with a target domain use random")
    plan = references.plan_synthesis(manifest, pool, cfg)
    log.info("synthesis plan: %d images for %d masks", len(plan), plan["mask_name"].nunique())
    return plan


def preview_ref_augmentation(
    tiles: TileSet, manifest: pd.DataFrame, augment: dict[str, Any], params: dict[str, Any]
) -> Figure:
    """Rows of (original | augmented × n) for a few training tiles, drawn with the preview's
    probability so that every row shows the operations (training uses ``ref_augment.p``)."""
    from tisynth.generator.augment import RefAugment

    preview = params.get("preview") or {}
    n_tiles, n_samples = int(preview.get("tiles", 4)), int(preview.get("samples", 5))
    rows = manifest[manifest["split"] == "train"].head(n_tiles)
    images = torch.stack([
        torch.from_numpy(tiles.read_image(p)).permute(2, 0, 1).float() / 127.5 - 1.0 for p in rows["image"]
    ])
    aug = RefAugment(**{**augment, "p": float(preview.get("p", augment.get("p", 0.12)))})
    gen = torch.Generator().manual_seed(int(preview.get("seed", 0)))
    grid = [[((img.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)] for img in images]
    for _ in range(n_samples):
        out = aug(images, generator=gen)
        for i, img in enumerate(out):
            grid[i].append(((img.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8))
    titles = ["original"] + [f"augmented {j + 1}" for j in range(n_samples)]
    return image_grid(grid, col_titles=titles, row_titles=list(rows["name"]),
                      title=f"Ref augmentation (p = {aug.p} per operation)")
