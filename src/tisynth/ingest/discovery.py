"""Finding a dataset's image/mask pairs, its class table and its split table."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tisynth.classes import ClassRegistry
from tisynth.ingest.config import IMAGE_DIR_CANDIDATES, MASK_DIR_CANDIDATES, SPLITS, DatasetConfig
from tisynth.io import IMAGE_SUFFIXES, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One raw image and its mask (None for unlabeled images)."""

    name: str
    image: Path
    mask: Path | None


@dataclass(frozen=True)
class Problem:
    path: str
    problem: str


def _find_dir(root: Path, explicit: str | None, candidates: Iterable[str], what: str) -> Path | None:
    if explicit:
        path = root / explicit
        if not path.is_dir():
            raise DataError(f"{path}: {what} folder not found")
        return path
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    return None


def _list_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if p.stem in files:
            raise DataError(f"{folder}: two files share the name {p.stem!r} ({files[p.stem].name}, {p.name})")
        files[p.stem] = p
    return files


def discover(cfg: DatasetConfig) -> tuple[list[Source], list[Problem]]:
    """Pair images with masks by file stem. Returns sources and the problems found."""
    root = cfg.root
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    image_dir = _find_dir(root, cfg.images, IMAGE_DIR_CANDIDATES, "image") or root
    mask_dir = _find_dir(root, cfg.masks, MASK_DIR_CANDIDATES, "mask")
    images = _list_files(image_dir)
    if not images:
        raise DataError(f"{image_dir}: no images (.png, .jpg, .tif) found; the dataset folder is empty")
    masks = _list_files(mask_dir) if mask_dir is not None else {}
    if cfg.require_masks and mask_dir is None:
        raise DataError(
            f"{root}: no mask folder (looked for {', '.join(MASK_DIR_CANDIDATES)}); "
            "set dataset.masks, or dataset.require_masks: false for unlabeled images"
        )
    sources, problems = [], []
    for stem, image in images.items():
        mask = masks.get(stem)
        if mask is None and cfg.require_masks:
            problems.append(Problem(str(image), f"missing mask: no {stem}.* in {mask_dir}"))
            continue
        sources.append(Source(stem, image, mask))
    orphans = sorted(set(masks) - set(images))
    if orphans:
        log.warning("%d mask(s) without an image are ignored, e.g. %s", len(orphans), masks[orphans[0]])
    return sources, problems


def load_registry(cfg: DatasetConfig) -> ClassRegistry:
    """The class registry from ``dataset.classes`` (a table relative to the root, or a list)."""
    return ClassRegistry.from_config(cfg.classes, root=cfg.root)


def read_split_table(cfg: DatasetConfig) -> pd.DataFrame | None:
    """The dataset's split file (``name, split`` and optional ``scene``/``group``) or None."""
    if not cfg.split_file:
        return None
    path = cfg.root / cfg.split_file
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype=str)
    if not {"name", "split"} <= set(table.columns):
        raise DataError(f"{path}: split file needs columns name,split; has {list(table.columns)}")
    bad = sorted(set(table["split"]) - set(SPLITS))
    if bad:
        raise DataError(f"{path}: unknown split value(s) {bad}; use {list(SPLITS)}")
    dup = table["name"][table["name"].duplicated()]
    if len(dup):
        raise DataError(f"{path}: name {dup.iloc[0]!r} appears more than once")
    return table.set_index("name")


