"""Thin nodes of the ``ingest`` pipeline; the logic lives in :mod:`tisynth.ingest`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from tisynth import ingest
from tisynth.classes import ClassRegistry
from tisynth.datasets import RawFolder, UseExisting
from tisynth.ingest.demo_scenes import DemoSceneConfig, write_demo_dataset
from tisynth.plots import class_share_figure

log = logging.getLogger(__name__)


def _dataset_config(raw: RawFolder, dataset: dict[str, Any]) -> ingest.DatasetConfig:
    return ingest.DatasetConfig.from_params({**dataset, "root": str(raw.root)})


def prepare_raw_dataset(dataset: dict[str, Any], demo: dict[str, Any]) -> Callable[[Path], Any] | UseExisting:
    """For ``dataset.kind: demo``, a writer of the seeded procedural GeoTIFF scenes; for real
    data, :class:`UseExisting` (the raw folder is only read)."""
    if dataset.get("kind") != "demo":
        return UseExisting()
    cfg = DemoSceneConfig.from_params(demo)
    return functools.partial(write_demo_dataset, cfg=cfg, classes=demo["classes"])


def build_class_registry(raw: RawFolder, dataset: dict[str, Any]) -> ClassRegistry:
    registry = ingest.load_registry(_dataset_config(raw, dataset))
    log.info("%d classes: %s; ignore id %s", registry.num_classes, ", ".join(registry.names), registry.ignore_id)
    return registry


def plan_tiles(
    raw: RawFolder, registry: ClassRegistry, dataset: dict[str, Any], params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    plan, problems = ingest.plan_tiles(registry, _dataset_config(raw, dataset), ingest.IngestConfig.from_params(params))
    return plan, problems


def write_tiles(
    raw: RawFolder, plan: pd.DataFrame, registry: ClassRegistry, dataset: dict[str, Any], params: dict[str, Any]
) -> tuple[Callable[[Path], None], pd.DataFrame]:
    """A writer for the tile folder (run by the catalog into a staging folder) and the manifest."""
    dcfg, icfg = _dataset_config(raw, dataset), ingest.IngestConfig.from_params(params)
    manifest = ingest.manifest_from_plan(plan, registry, icfg)
    writer = functools.partial(ingest.write_tiles, manifest, registry, dcfg, icfg)
    return writer, ingest.public_manifest(manifest)


def _no_tiles(folder: Path) -> None:
    """Writer of an empty tile folder (no target domain)."""


def ingest_target(
    raw: RawFolder, registry: ClassRegistry, target: dict[str, Any], params: dict[str, Any]
) -> tuple[Callable[[Path], None], pd.DataFrame, pd.DataFrame]:
    """Tiles of the target domain (Refs for synthesis; its masks, if any, only for evaluation).

    Without a target (``target.root`` unset) the outputs are empty and everything downstream
    behaves as with a single domain. Target class tables must agree with the source's.
    """
    if raw.root is None:
        return _no_tiles, ingest.empty_manifest(registry), pd.DataFrame(columns=["path", "problem"])
    tcfg = ingest.DatasetConfig.from_params({"require_masks": False, **target, "root": str(raw.root)}, what="target")
    ingest.check_target_classes(registry, tcfg)
    icfg = ingest.IngestConfig.from_params(params)
    plan, problems = ingest.plan_tiles(registry, tcfg, icfg, default_split=None if tcfg.split_file and
                                       (tcfg.root / tcfg.split_file).is_file() else "test")
    manifest = ingest.manifest_from_plan(plan, registry, icfg)
    log.info("target domain %s: %d tiles (%d labelled)", raw.root, len(manifest), int(manifest["mask"].notna().sum()))
    writer = functools.partial(ingest.write_tiles, manifest, registry, tcfg, icfg)
    return writer, ingest.public_manifest(manifest), problems


def export_tisynth_jsonl(manifest: pd.DataFrame) -> pd.DataFrame:
    return ingest.tisynth_jsonl(manifest)


def summarise_classes(
    manifest: pd.DataFrame, registry: ClassRegistry
) -> tuple[pd.DataFrame, Figure, dict[str, Any]]:
    stats = ingest.class_statistics(manifest, registry)
    figure = class_share_figure(stats, registry)
    metrics: dict[str, Any] = {f"tiles_{s}": {"value": float((manifest["split"] == s).sum()), "step": 0}
                               for s in ("train", "val", "test", "unlabeled")}
    for row in stats[stats["split"] == "all"].itertuples():
        metrics[f"share_{row.class_index}"] = {"value": float(row.share), "step": 0}
    return stats, figure, metrics
