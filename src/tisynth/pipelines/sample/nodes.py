"""Thin nodes of the ``sample`` pipeline; the logic is in :mod:`tisynth.synthesis` and
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

from tisynth import synthesis
from tisynth.classes import ClassRegistry
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
