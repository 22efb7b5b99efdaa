"""Ingestion settings: the dataset to read (``DatasetConfig``) and how to tile it (``IngestConfig``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tisynth.classes import DEFAULT_PROMPT_TEMPLATE
from tisynth.ingest.rasters import EDGE_MODES
from tisynth.io import DataError

log = logging.getLogger(__name__)


IMAGE_DIR_CANDIDATES = ("images", "img_dir", "img", "scenes", "imgs")
MASK_DIR_CANDIDATES = ("masks", "ann_dir", "label", "labels", "annotations")
SPLITS = ("train", "val", "test")
UNLABELED = "unlabeled"


@dataclass(frozen=True)
class DatasetConfig:
    """Where the raw dataset is and how it is laid out (``params:dataset``)."""

    root: Path
    kind: str = "folder"  # demo | folder | geotiff (geotiff = folder of GeoTIFF scenes)
    images: str | None = None  # image sub-folder; None = first of IMAGE_DIR_CANDIDATES, else root
    masks: str | None = None  # mask sub-folder; None = first of MASK_DIR_CANDIDATES
    require_masks: bool = True  # False: images without masks become unlabeled tiles
    split_file: str | None = "split.csv"  # relative to root; used when it exists
    bands: tuple[int, ...] | None = None  # 1-based bands for multi-band GeoTIFFs (default: 1, 2, 3)
    classes: Mapping[str, Any] = field(default_factory=lambda: {"table": "classes.csv", "ignore_id": "auto"})
    groups: tuple[str, ...] | None = None  # keep only sources of these groups (split file's scene/group column)
    labelled_fraction: float = 1.0  # the label-scarce protocol: share of train tiles that keep their masks
    labelled_seed: int = 0

    @classmethod
    def from_params(cls, params: Mapping[str, Any], what: str = "dataset") -> DatasetConfig:
        if "root" not in params or params["root"] in (None, ""):
            raise DataError(f"{what}.root is not set; pass --params={what}.root=<folder>")
        fraction = float(params.get("labelled_fraction", 1.0))
        if not 0.0 < fraction <= 1.0:
            raise DataError(f"{what}.labelled_fraction must be in (0, 1], got {fraction}")
        bands = params.get("bands")
        groups = params.get("groups")
        if isinstance(groups, str):
            groups = groups.replace("+", " ").split()
        return cls(
            root=Path(params["root"]),
            kind=params.get("kind", "folder"),
            images=params.get("images"),
            masks=params.get("masks"),
            require_masks=bool(params.get("require_masks", True)),
            split_file=params.get("split_file", "split.csv"),
            bands=tuple(int(b) for b in bands) if bands else None,
            classes=params.get("classes") or {"table": "classes.csv", "ignore_id": "auto"},
            groups=tuple(str(g) for g in groups) if groups else None,
            labelled_fraction=float(params.get("labelled_fraction", 1.0)),
            labelled_seed=int(params.get("labelled_seed", 0)),
        )


@dataclass(frozen=True)
class IngestConfig:
    """How sources become tiles (``params:ingest``)."""

    tile_size: int | None = None  # None: one tile per image at its native size
    stride: int | None = None  # None = tile_size
    edge: str = "shift"
    max_ignore_fraction: float = 1.0
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    image_format: str = "auto"  # auto (tif for georeferenced sources, else png) | png | tif
    skip_bad: bool = False
    split_seed: int = 0
    split_fractions: Mapping[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    split_by: str = "tile"  # tile | source (all tiles of a source in one split)
    workers: int = 2
    chunk_tiles: int = 64  # tiles per unit of work of a writer thread
    compress: str = "deflate"  # GeoTIFF tile codec: deflate | lzw | zstd | none

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> IngestConfig:
        split = params.get("split") or {}
        cfg = cls(
            tile_size=params.get("tile_size"),
            stride=params.get("stride"),
            edge=params.get("edge", "shift"),
            max_ignore_fraction=float(params.get("max_ignore_fraction", 1.0)),
            prompt_template=params.get("prompt_template", DEFAULT_PROMPT_TEMPLATE),
            image_format=params.get("image_format", "auto"),
            skip_bad=bool(params.get("skip_bad", False)),
            split_seed=int(split.get("seed", 0)),
            split_fractions=dict(split.get("fractions") or {"train": 0.7, "val": 0.15, "test": 0.15}),
            split_by=split.get("by", "tile"),
            workers=int(params.get("workers", 2)),
            chunk_tiles=int(params.get("chunk_tiles", 64)),
            compress=str(params.get("compress", "deflate")),
        )
        if cfg.compress not in ("deflate", "lzw", "zstd", "none"):
            raise DataError(f"ingest.compress must be deflate, lzw, zstd or none, got {cfg.compress!r}")
        if cfg.edge not in EDGE_MODES:
            raise DataError(f"ingest.edge must be one of {EDGE_MODES}, got {cfg.edge!r}")
        if cfg.image_format not in ("auto", "png", "tif"):
            raise DataError(f"ingest.image_format must be auto, png or tif, got {cfg.image_format!r}")
        if "{classes}" not in cfg.prompt_template:
            raise DataError(f"ingest.prompt_template must contain {{classes}}: {cfg.prompt_template!r}")
        if cfg.split_by not in ("tile", "source"):
            raise DataError(f"ingest.split.by must be 'tile' or 'source', got {cfg.split_by!r}")
        bad = set(cfg.split_fractions) - set(SPLITS)
        if bad or abs(sum(cfg.split_fractions.values()) - 1.0) > 1e-6:
            raise DataError(f"ingest.split.fractions must be train/val/test summing to 1, got {dict(cfg.split_fractions)}")
        return cfg


