"""Ingestion: from a raw dataset (a folder of images + masks, or GeoTIFF scenes with label
rasters) to fixed-size tiles, a manifest and a TISynth-format JSON-lines export.

Two passes. :func:`plan_tiles` reads every source once to validate it (sizes, mask values,
readability, georeferencing) and to count classes per tile, and collects every problem before
anything is written; :func:`write_tiles` then reads the windows again and writes the tiles.
With ``skip_bad`` the bad sources are skipped and reported instead of stopping the run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tisynth.classes import DEFAULT_PROMPT_TEMPLATE, IGNORE_INDEX, ClassRegistry, RegistryError
from tisynth.io import IMAGE_SUFFIXES, DataError, write_geotiff, write_image
from tisynth.rasters import EDGE_MODES, RasterSource, Window, tile_windows, to_rgb8, transform_to_list

log = logging.getLogger(__name__)

IMAGE_DIR_CANDIDATES = ("images", "img_dir", "img", "scenes", "imgs")
MASK_DIR_CANDIDATES = ("masks", "ann_dir", "label", "labels", "annotations")
SPLITS = ("train", "val", "test")
UNLABELED = "unlabeled"


# ---------------------------------------------------------------------------- config
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


# ---------------------------------------------------------------------------- discovery
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


# ---------------------------------------------------------------------------- planning
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


# ---------------------------------------------------------------------------- writing
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
