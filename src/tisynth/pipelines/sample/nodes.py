"""Thin nodes of the ``sample`` pipeline; the logic is in :mod:`tisynth.generator.synthesis` and
:mod:`tisynth.generator.sample`."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure

from tisynth.classes import ClassRegistry
from tisynth.generator import synthesis
from tisynth.io import TileSet
from tisynth.plots import image_grid

log = logging.getLogger(__name__)


def _device(requested: str | None) -> str:
    if requested in (None, "auto"):
        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"  # one GPU per process under accelerate
    return requested


def sample_synthetic_images(
    generator: Any, tiles: TileSet, target_tiles: TileSet, plan: pd.DataFrame, params: dict[str, Any]
) -> Callable[[Path], int]:
    """A writer that samples every planned image not yet on disk (run by the catalog)."""
    settings = synthesis.SynthesisSettings.from_params(params)
    device = _device(settings.sample.get("device"))
    generator.to(device).eval()
    settings = synthesis.SynthesisSettings(**{**settings.__dict__, "sample": {**settings.sample, "device": device}})
    version = synthesis.generator_version(generator)
    log.info("sampling %d planned images with generator %s on %s", len(plan), version, device)
    return functools.partial(synthesis.write_synthetic_images, model=generator, plan=plan,
                             tilesets={"source": tiles, "target": target_tiles}, settings=settings, version=version)


def index_synthetic_images(images: TileSet, plan: pd.DataFrame, params: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    settings = synthesis.SynthesisSettings.from_params(params)
    manifest = synthesis.index_synthetic(images, plan, settings.image_format)
    metrics = {"images": {"value": float(len(manifest)), "step": 0},
               "planned": {"value": float(len(plan)), "step": 0}}
    return manifest, metrics


def synthetic_grid(
    images: TileSet, tiles: TileSet, target_tiles: TileSet, manifest: pd.DataFrame, registry: ClassRegistry,
    params: dict[str, Any],
) -> Figure:
    """Rows: mask | Ref | synthetic × K for the first few (mask, Ref) pairs."""
    n_rows = int((params.get("grid") or {}).get("rows", 6))
    rows, titles = [], []
    for (mask_name, ref_name), group in manifest.groupby(["mask_name", "ref_name"], sort=True):
        if len(rows) == n_rows:
            break
        first = group.iloc[0]
        mask = registry.colorize(tiles.read_mask(first["mask"]))
        ref = (tiles if first["ref_domain"] == "source" else target_tiles).read_image(first["ref"])
        row = [mask, ref]
        row += [images.read_image(p) for p in group.sort_values("k")["image"]]
        rows.append(row)
        titles.append(mask_name)
    k = max((len(r) - 2 for r in rows), default=0)
    return image_grid(rows, col_titles=["mask", f"Ref ({manifest['ref_domain'].iloc[0]})"] + [f"synthetic {j + 1}" for j in range(k)],
                      row_titles=titles, title="Synthetic images: mask | Ref | samples")


def synthetic_image_quality(
    images: TileSet, manifest: pd.DataFrame, tiles: TileSet, tile_manifest: pd.DataFrame, params: dict[str, Any]
) -> dict[str, Any]:
    """FID and KID of the synthetic images against real tiles of a held-out split (MLflow metrics
    ``quality.fid``, ``quality.kid``), with the standard FID Inception network
    (:mod:`tisynth.generator.quality`); skipped with a message when that network is not installed."""
    from tisynth.generator import quality

    cfg = dict(params.get("quality") or {})
    n = int(cfg.get("images", 0))
    if n <= 0 or manifest.empty:
        log.info("image quality (FID/KID) skipped (sample.quality.images: %s)", n)
        return {}
    if not quality.fid_available():
        log.warning("image quality (FID/KID) skipped: the FID Inception network is not installed (%s)", quality.INSTALL_HINT)
        return {}
    split = str(cfg.get("real_split", "val"))
    real_rows = tile_manifest[tile_manifest["split"] == split].head(n)
    least = max(2, int(cfg.get("min_images", 20)))
    if len(real_rows) < least or len(manifest) < least:
        log.info("image quality (FID/KID) skipped: %d real %r tiles and %d synthetic images, fewer than min_images %d",
                 len(real_rows), split, len(manifest), least)
        return {}
    synthetic = [images.read_image(p) for p in manifest["image"].head(n)]
    real = [tiles.read_image(p) for p in real_rows["image"]]
    result = quality.image_quality(synthetic, real, kid_subset_size=int(cfg.get("kid_subset_size", 100)))
    log.info("FID %.1f, KID %.4f ± %.4f (%d synthetic vs %d real %s tiles)", result["fid"], result["kid_mean"],
             result["kid_std"], result["n_a"], result["n_b"], split)
    return {key: {"value": float(result[key]), "step": 0} for key in ("fid", "kid_mean", "kid_std")}
