"""The second ingestion pass: write the planned tiles, the manifest and the TISynth JSON-lines export."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tisynth.classes import IGNORE_INDEX, ClassRegistry
from tisynth.ingest.config import SPLITS, DatasetConfig, IngestConfig
from tisynth.ingest.discovery import load_registry
from tisynth.ingest.planning import _tile_mask
from tisynth.ingest.rasters import RasterSource, Window, to_rgb8
from tisynth.io import DataError, write_geotiff, write_image

log = logging.getLogger(__name__)


def _image_suffix(georeferenced: bool, icfg: IngestConfig) -> str:
    if icfg.image_format == "auto":
        return ".tif" if georeferenced else ".png"
    return "." + icfg.image_format


def manifest_from_plan(plan: pd.DataFrame, registry: ClassRegistry, icfg: IngestConfig) -> pd.DataFrame:
    """The tile manifest (see docs/architecture.md) for a plan."""
    m = plan.copy()
    m["image"] = [f"images/{n}{_image_suffix(g, icfg)}" for n, g in zip(m["name"], m["georeferenced"])]
    m["mask"] = [f"masks/{n}.png" if s is not None else None for n, s in zip(m["name"], m["source_mask"])]
    px = [f"px_{k}" for k in range(registry.num_classes)] + ["px_ignore"]
    cols = ["name", "split", "image", "mask", "source", "group", "row_off", "col_off", "height", "width",
            "crs", "transform", *px, "ignore_fraction", "dominant", "prompt"]
    m = m[cols + ["source_image", "source_mask", "georeferenced"]]
    for c in px:
        m[c] = m[c].astype("Int64")
    return m.reset_index(drop=True)


def _write_chunk(rows: pd.DataFrame, stretch: tuple[float, float] | None, registry: ClassRegistry,
                 dcfg: DatasetConfig, icfg: IngestConfig, out: Path) -> int:
    """Write the tiles of ``rows`` (all of one source) with their own file handles."""
    first = rows.iloc[0]
    with RasterSource(first["source_image"], dcfg.bands) as img:
        msk = RasterSource(first["source_mask"]) if first["source_mask"] is not None else None
        try:
            fill = img.nodata if img.nodata is not None else 0
            for row in rows.itertuples(index=False):
                w = Window(int(row.row_off), int(row.col_off), int(row.height), int(row.width))
                where = f"{img.path} window {w}"
                rgb = to_rgb8(img.read(w, fill=fill), stretch, where)
                image_path = out / row.image
                if image_path.suffix == ".tif":
                    write_geotiff(image_path, rgb, crs=img.crs if img.georeferenced else None,
                                  transform=img.window_transform(w) if img.georeferenced else None,
                                  compress=icfg.compress)
                else:
                    write_image(image_path, rgb)
                if msk is not None and isinstance(row.mask, str):  # held-out labels are never read
                    mask = _tile_mask(registry, msk, img.valid_mask(w), w)
                    write_image(out / row.mask, mask)
            return len(rows)
        finally:
            if msk is not None:
                msk.close()


def write_tiles(manifest: pd.DataFrame, registry: ClassRegistry, dcfg: DatasetConfig, icfg: IngestConfig, out: Path) -> None:
    """Write every tile of ``manifest`` under ``out`` (``images/``, ``masks/``).

    Work is split into chunks of tiles of one source, written by ``icfg.workers`` threads,
    each with its own file handles (GDAL releases the GIL while it reads, decodes and
    compresses); a scene-wide 8-bit stretch is computed once per source.
    """
    (out / "images").mkdir(parents=True, exist_ok=True)
    if manifest["mask"].notna().any():
        (out / "masks").mkdir(parents=True, exist_ok=True)
    tasks = []
    for source, group in manifest.groupby("source_image", sort=False):
        with RasterSource(source, dcfg.bands) as img:
            stretch = img.stretch_range()
        picture = Path(source).suffix.lower() not in (".tif", ".tiff")  # held in memory whole: one chunk
        size = len(group) if picture else max(1, min(icfg.chunk_tiles, -(-len(group) // max(1, icfg.workers))))
        tasks += [(group.iloc[i : i + size], stretch) for i in range(0, len(group), size)]
    with tqdm(total=len(manifest), desc="writing tiles", unit="tile") as bar:
        if icfg.workers > 1 and len(tasks) > 1:
            with ThreadPoolExecutor(icfg.workers) as pool:
                for n in pool.map(lambda t: _write_chunk(t[0], t[1], registry, dcfg, icfg, out), tasks):
                    bar.update(n)
        else:
            for rows, stretch in tasks:
                bar.update(_write_chunk(rows, stretch, registry, dcfg, icfg, out))


def public_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest without the raw-source bookkeeping columns."""
    return manifest.drop(columns=["source_image", "source_mask", "georeferenced"]).reset_index(drop=True)


def tisynth_jsonl(manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows of the original TISynth JSON-lines format (``source`` = mask, ``target`` = image,
    ``prompt``), relative to the tile folder, for labelled tiles; ``split`` is extra."""
    labeled = manifest[manifest["mask"].notna()]
    return pd.DataFrame(
        {"source": labeled["mask"], "target": labeled["image"], "prompt": labeled["prompt"], "split": labeled["split"]}
    ).reset_index(drop=True)


def class_statistics(manifest: pd.DataFrame, registry: ClassRegistry) -> pd.DataFrame:
    """Pixel count and share per class (ignore included) and split, plus an ``all`` split."""
    labeled = manifest[manifest["mask"].notna()]
    names = registry.names + [registry.ignore_name]
    cols = [f"px_{k}" for k in range(registry.num_classes)] + ["px_ignore"]
    rows = []
    for split, part in [("all", labeled)] + [(s, labeled[labeled["split"] == s]) for s in SPLITS]:
        counts = part[cols].sum().astype(float).to_numpy() if len(part) else np.zeros(len(cols))
        total = counts.sum()
        for k, (name, n) in enumerate(zip(names, counts)):
            rows.append({"split": split, "class_index": k if k < registry.num_classes else IGNORE_INDEX,
                         "class": name, "pixels": int(n), "share": (n / total) if total else 0.0,
                         "tiles": len(part)})
    return pd.DataFrame(rows)


def check_target_classes(source: ClassRegistry, tcfg: DatasetConfig) -> ClassRegistry | None:
    """The target's own class table must agree with the source's (same ids and names).

    Returns the target registry, or None when the target has no class table (its masks, if
    any, are then read with the source's). Raises :class:`DataError` showing the differences.
    """
    classes = tcfg.classes or {}
    table = classes.get("table")
    has_table = bool(classes.get("classes")) or (table and (tcfg.root / table).is_file())
    if not has_table:
        return None
    target = load_registry(tcfg)
    diffs = source.class_differences(target)
    if diffs:
        raise DataError(
            f"the class tables of source ({source.source}) and target ({target.source}) differ; "
            "they must have the same ids and names:\n  " + "\n  ".join(diffs)
        )
    return target


def empty_manifest(registry: ClassRegistry) -> pd.DataFrame:
    """A manifest with no rows (no target domain), with the usual columns."""
    px = [f"px_{k}" for k in range(registry.num_classes)] + ["px_ignore"]
    cols = ["name", "split", "image", "mask", "source", "group", "row_off", "col_off", "height", "width",
            "crs", "transform", *px, "ignore_fraction", "dominant", "prompt"]
    return pd.DataFrame({c: pd.Series(dtype="object") for c in cols})
