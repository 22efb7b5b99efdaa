"""The first ingestion pass: read every source once, validate it, count classes per tile and
assign splits; every problem is collected before anything is written."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tisynth.classes import IGNORE_INDEX, ClassRegistry, RegistryError
from tisynth.ingest.config import SPLITS, UNLABELED, DatasetConfig, IngestConfig
from tisynth.ingest.discovery import Problem, Source, discover, read_split_table
from tisynth.ingest.rasters import RasterSource, Window, tile_windows, transform_to_list
from tisynth.io import DataError

log = logging.getLogger(__name__)


def _tile_name(source: str, window: Window, single: bool) -> str:
    return source if single else f"{source}_y{window.row_off:05d}_x{window.col_off:05d}"


def _check_alignment(img: RasterSource, msk: RasterSource) -> str | None:
    if (img.height, img.width) != (msk.height, msk.width):
        return f"image is {img.height}x{img.width} but mask {msk.path.name} is {msk.height}x{msk.width}"
    if img.georeferenced and msk.georeferenced:
        if img.crs != msk.crs:
            return f"label raster CRS {msk.crs} differs from the image's {img.crs}"
        if not np.allclose(tuple(img.transform)[:6], tuple(msk.transform)[:6]):
            return "label raster transform differs from the image's (not on the same grid)"
    return None


def _tile_mask(registry: ClassRegistry, msk: RasterSource | None, valid: np.ndarray, window: Window) -> np.ndarray | None:
    """Index-space mask of a window, with no-data / outside pixels (``~valid``) set to ignore."""
    if msk is None:
        return None
    fill = registry.ignore_id if registry.ignore_id is not None else 0
    raw = msk.read(window, fill=fill)
    whole = window == Window(0, 0, msk.height, msk.width)
    mask = registry.decode(raw, where=str(msk.path) if whole else f"{msk.path} window {window}")
    mask = mask.copy()
    mask[~valid] = IGNORE_INDEX
    return mask


def plan_source(source: Source, registry: ClassRegistry, dcfg: DatasetConfig, icfg: IngestConfig) -> list[dict[str, Any]]:
    """Validate one source and describe its tiles (no pixels kept). Raises DataError/RegistryError."""
    with RasterSource(source.image, dcfg.bands) as img:
        msk = RasterSource(source.mask) if source.mask is not None else None
        try:
            if img.count == 2:
                raise DataError(f"{source.image}: image has 2 bands; need 1 or at least 3")
            if msk is not None:
                problem = _check_alignment(img, msk)
                if problem:
                    raise DataError(f"{source.image}: {problem}")
                if msk.count not in (1, 3, 4):
                    raise DataError(f"{msk.path}: mask has {msk.count} bands; need 1 (ids) or 3 (RGB palette)")
            if img.path.suffix.lower() not in (".tif", ".tiff"):
                # pictures are fully decoded here, which catches truncated files early
                img.read(Window(0, 0, 1, 1))
            if icfg.tile_size is None:
                windows = [Window(0, 0, img.height, img.width)]
            else:
                windows = tile_windows(img.height, img.width, icfg.tile_size, icfg.stride, icfg.edge)
            single = len(windows) == 1 and windows[0] == Window(0, 0, img.height, img.width)
            crs = img.crs.to_wkt() if img.georeferenced else None
            rows = []
            for w in windows:
                valid = img.valid_mask(w)
                mask = _tile_mask(registry, msk, valid, w)
                if mask is not None:
                    hist = registry.histogram(mask)
                    ignore_fraction = float(hist[-1]) / mask.size
                    classes = hist[:-1]
                    dominant = int(np.argmax(classes)) if classes.sum() > 0 else -1
                    prompt = registry.prompt([k for k in range(registry.num_classes) if classes[k] > 0], icfg.prompt_template)
                else:
                    hist = None
                    ignore_fraction = 1.0 - float(valid.mean())
                    dominant = -1
                    prompt = None
                row: dict[str, Any] = {
                    "name": _tile_name(source.name, w, single),
                    "source": source.name,
                    "source_image": str(source.image),
                    "source_mask": str(source.mask) if source.mask is not None else None,
                    "row_off": w.row_off,
                    "col_off": w.col_off,
                    "height": w.height,
                    "width": w.width,
                    "crs": crs,
                    "transform": transform_to_list(img.window_transform(w)),
                    "georeferenced": img.georeferenced,
                    "ignore_fraction": ignore_fraction,
                    "dominant": dominant,
                    "prompt": prompt,
                }
                for k in range(registry.num_classes):
                    row[f"px_{k}"] = int(hist[k]) if hist is not None else None
                row["px_ignore"] = int(hist[-1]) if hist is not None else None
                rows.append(row)
            return rows
        finally:
            if msk is not None:
                msk.close()


def assign_splits(
    plan: pd.DataFrame, split_table: pd.DataFrame | None, icfg: IngestConfig, default_split: str | None = None
) -> tuple[pd.DataFrame, list[Problem]]:
    """Add ``split`` and ``group`` columns.

    With a split table, tiles inherit the split of their source (and its ``scene``/``group``
    as group); sources missing from the table are problems. Without one, a seeded split
    stratified by dominant class (per tile, or per source with ``split.by: source``).
    Unlabeled tiles get the split ``unlabeled``. ``default_split`` (when given) replaces the
    seeded split: every labelled tile gets it (a target domain's tiles are all ``test``).
    """
    plan = plan.copy()
    problems: list[Problem] = []
    labeled = plan["source_mask"].notna()
    plan["group"] = plan["source"]
    plan["split"] = UNLABELED
    if split_table is not None:
        group_col = next((c for c in ("group", "scene") if c in split_table.columns), None)
        missing = ~plan["source"].isin(split_table.index)
        for src in plan.loc[missing & labeled, "source"].unique():
            problems.append(Problem(str(plan.loc[plan["source"] == src, "source_image"].iloc[0]), f"source {src!r} is not in the split file"))
        known = ~missing
        plan.loc[known & labeled, "split"] = plan.loc[known & labeled, "source"].map(split_table["split"])
        if group_col:
            plan.loc[known, "group"] = plan.loc[known, "source"].map(split_table[group_col])
        return plan, problems
    if default_split is not None:
        plan.loc[labeled, "split"] = default_split
        return plan, problems

    rng = np.random.default_rng(icfg.split_seed)
    fractions = [icfg.split_fractions.get(s, 0.0) for s in SPLITS]
    if icfg.split_by == "source":
        per_source = plan[labeled].groupby("source").agg(dominant=("dominant", lambda d: int(d.mode().iloc[0])))
        units = per_source.reset_index().rename(columns={"source": "unit"})
        key = plan["source"]
    else:
        units = plan.loc[labeled, ["name", "dominant"]].rename(columns={"name": "unit"})
        key = plan["name"]
    assignment: dict[str, str] = {}
    for _, group in units.sort_values("unit").groupby("dominant", sort=True):
        order = rng.permutation(len(group))
        names = group["unit"].to_numpy()[order]
        bounds = np.round(np.cumsum(fractions) * len(names)).astype(int)
        start = 0
        for split, end in zip(SPLITS, bounds):
            for n in names[start:end]:
                assignment[n] = split
            start = end
    plan.loc[labeled, "split"] = key[labeled].map(assignment)
    return plan, problems


def hold_out_labels(plan: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """The label-scarce protocol: keep the masks of ``fraction`` of the labelled train tiles.

    The kept tiles are drawn per dominant class (seeded, at least one tile of every class that
    dominates some train tile); every other train tile becomes an unlabeled tile (split
    ``unlabeled``): its mask is not written, its manifest row carries no mask, class counts or
    prompt, so no later stage can read its labels. They form the pool of unlabeled Refs.
    Val and test tiles keep their masks.
    """
    if fraction >= 1.0:
        return plan
    plan = plan.copy()
    train = plan[(plan["split"] == "train") & plan["source_mask"].notna()]
    rng = np.random.default_rng(seed)
    dropped: list[Any] = []
    for _, group in train.sort_values("name").groupby("dominant", sort=True):
        keep = max(1, int(round(fraction * len(group))))
        dropped.extend(group.index[rng.permutation(len(group))[keep:]])
    px = [c for c in plan.columns if c.startswith("px_")]
    plan[px + ["source_mask", "prompt"]] = plan[px + ["source_mask", "prompt"]].astype(object)
    plan.loc[dropped, "split"] = UNLABELED
    plan.loc[dropped, ["source_mask", "prompt", *px]] = None
    plan.loc[dropped, "dominant"] = -1
    log.info("labelled_fraction %.2f: %d of %d train tiles keep their masks, %d become unlabeled Refs",
             fraction, len(train) - len(dropped), len(train), len(dropped))
    return plan


def _keep_groups(sources: list[Source], problems: list[Problem], dcfg: DatasetConfig) -> tuple[list[Source], list[Problem]]:
    table = read_split_table(dcfg)
    column = None if table is None else next((c for c in ("group", "scene") if c in table.columns), None)
    if column is None:
        raise DataError(f"{dcfg.root}: groups {list(dcfg.groups or [])} were asked for, but there is no split file "
                        "with a scene/group column to take them from")
    known = sorted(set(table[column]))
    unknown = sorted(set(dcfg.groups or []) - set(known))
    if unknown:
        raise DataError(f"{dcfg.root}: unknown group(s) {unknown}; the split file has {known}")
    keep = set(table.index[table[column].isin(dcfg.groups or [])])
    kept = [s for s in sources if s.name in keep]
    log.info("groups %s: %d of %d sources", list(dcfg.groups or []), len(kept), len(sources))
    return kept, [p for p in problems if Path(p.path).stem in keep]


def plan_tiles(
    registry: ClassRegistry, dcfg: DatasetConfig, icfg: IngestConfig, default_split: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate the whole dataset and plan its tiles.

    Returns (plan, problems). Raises :class:`DataError` listing every problem unless
    ``skip_bad`` is set, before any output is written.
    """
    sources, problems = discover(dcfg)
    if dcfg.groups:
        sources, problems = _keep_groups(sources, problems, dcfg)
    rows: list[dict[str, Any]] = []
    for source in tqdm(sources, desc="checking sources", unit="image", leave=False):
        try:
            rows.extend(plan_source(source, registry, dcfg, icfg))
        except (DataError, RegistryError) as exc:
            message = str(exc)
            if message.startswith(str(source.image) + ": "):
                message = message[len(str(source.image)) + 2:]
            problems.append(Problem(str(source.image), message))
    plan = pd.DataFrame(rows)
    if not plan.empty:
        dropped = plan["ignore_fraction"] > icfg.max_ignore_fraction
        if dropped.any():
            log.info("%d tile(s) dropped: more than %.0f%% ignore/no-data", int(dropped.sum()), 100 * icfg.max_ignore_fraction)
        plan = plan[~dropped].reset_index(drop=True)
        plan, split_problems = assign_splits(plan, read_split_table(dcfg), icfg, default_split)
        plan = hold_out_labels(plan, dcfg.labelled_fraction, dcfg.labelled_seed)
        problems.extend(split_problems)
        bad_sources = {p.path for p in split_problems}
        plan = plan[~plan["source_image"].isin(bad_sources)].reset_index(drop=True)
        dup = plan["name"][plan["name"].duplicated()]
        if len(dup):
            raise DataError(f"{dcfg.root}: tile name {dup.iloc[0]!r} occurs twice; rename one of its sources")
    report = pd.DataFrame([p.__dict__ for p in problems], columns=["path", "problem"])
    if problems and not icfg.skip_bad:
        listing = "\n".join(f"  {p.path}: {p.problem}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(
            f"{len(problems)} problem(s) in dataset {dcfg.root} (nothing was written; "
            f"set ingest.skip_bad: true to skip them):\n{listing}{more}"
        )
    if problems:
        log.warning("skipping %d bad source(s); see the ingest problems report", len(problems))
    if plan.empty:
        raise DataError(f"{dcfg.root}: no tiles left to write (all sources bad or all tiles over max_ignore_fraction)")
    return plan, report


