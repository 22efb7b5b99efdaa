"""(image, mask) pairs: what every segmentation job trains and evaluates on.

A pair is two absolute paths: an RGB image (PNG / JPEG / GeoTIFF, read with
:func:`tisynth.io.read_image`) and an index-space mask PNG (``0..K-1``, 255 = ignore). Pairs
are built from the manifests (``tile_manifest``, ``filtered_manifest``) or directly from files,
and handed to mmseg through a small JSON file so that generated configs stay short.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from tisynth.classes import IGNORE_INDEX
from tisynth.io import DataError, TileSet, read_raster, write_json_atomic


class Pair(NamedTuple):
    """An image and its index-space mask (absolute paths)."""

    image: str
    mask: str


def _root(tiles: TileSet | str | Path) -> Path:
    return tiles.root if isinstance(tiles, TileSet) else Path(tiles)


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{what}: missing column(s) {missing}; has {list(frame.columns)}")


def pairs_from_manifest(
    manifest: pd.DataFrame,
    tiles: TileSet | str | Path,
    splits: str | Sequence[str],
    what: str = "tile_manifest",
) -> list[Pair]:
    """Labelled tiles of the given split(s), in manifest order.

    A row of a requested split without a mask is an error (labelled splits must be labelled).
    """
    _require_columns(manifest, ("name", "split", "image", "mask"), what)
    wanted = [splits] if isinstance(splits, str) else list(splits)
    root = _root(tiles)
    rows = manifest[manifest["split"].isin(wanted)]
    unlabeled = rows[rows["mask"].isna()]
    if len(unlabeled):
        names = unlabeled["name"].head(5).tolist()
        raise DataError(f"{what}: {len(unlabeled)} tile(s) of split(s) {wanted} have no mask, e.g. {names}")
    return [Pair(str(root / img), str(root / msk)) for img, msk in zip(rows["image"], rows["mask"])]


def synthetic_pairs_from_manifest(
    filtered_manifest: pd.DataFrame,
    synthetic_images: TileSet | str | Path,
    filtered_masks: TileSet | str | Path,
    kept_only: bool = True,
    what: str = "filtered_manifest",
) -> list[Pair]:
    """Synthetic images with their filtered masks (only ``kept`` rows unless ``kept_only`` is False)."""
    _require_columns(filtered_manifest, ("name", "image", "filtered_mask", "kept"), what)
    rows = filtered_manifest[filtered_manifest["kept"].astype(bool)] if kept_only else filtered_manifest
    img_root, mask_root = _root(synthetic_images), _root(filtered_masks)
    return [Pair(str(img_root / img), str(mask_root / msk)) for img, msk in zip(rows["image"], rows["filtered_mask"])]


def check_pairs(pairs: Sequence[Pair], what: str) -> None:
    """Every file of every pair exists (error names the first missing ones)."""
    missing = [p for pair in pairs for p in pair if not Path(p).is_file()]
    if missing:
        raise DataError(f"{what}: {len(missing)} file(s) not found, e.g. {missing[:3]}")


def write_pairs(path: str | Path, pairs: Sequence[Pair]) -> Path:
    """Write pairs as JSON (atomically) for the mmseg dataset; returns the path."""
    write_json_atomic(path, [[str(p.image), str(p.mask)] for p in pairs])
    return Path(path)


def read_pairs(path: str | Path) -> list[Pair]:
    """Read a pairs JSON written by :func:`write_pairs`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read pairs file ({exc})") from exc
    if not isinstance(data, list) or any(not isinstance(r, list) or len(r) != 2 for r in data):
        raise DataError(f"{path}: expected a JSON list of [image, mask] pairs")
    return [Pair(str(a), str(b)) for a, b in data]


def read_index_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """Read an index-space mask (2-D, values ``0..K-1`` or 255) as uint8; errors name the file."""
    mask = read_raster(path)
    if mask.ndim != 2:
        raise DataError(f"{path}: mask must be single-band (index space), got shape {mask.shape}")
    if mask.dtype.kind not in "iu":
        raise DataError(f"{path}: mask dtype {mask.dtype} is not integer")
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any() or (mask < 0).any():
        values = np.unique(mask[bad | (mask < 0)])[:10].tolist()
        raise DataError(
            f"{path}: mask value(s) {values} are neither a class index (0..{num_classes - 1}) nor "
            f"ignore ({IGNORE_INDEX}); masks must be in index space (see tisynth.classes)"
        )
    return mask.astype(np.uint8, copy=False)
