"""FreeMask-style filtering of synthetic masks and TISynth's resampling (METHOD §4).

A segmenter trained on real data only judges every synthetic pixel against the mask that
conditioned the image:

1. **Class-wise reference loss** on the real *training* tiles:
   ``mu_c = sum of the pixel cross-entropies of class-c pixels / (count_c + 1e-5)``.
   A class without training pixels gets ``mu_c = 0``, so all its synthetic pixels with a
   positive loss are filtered (the authors' behaviour; such a class cannot be judged).
2. **Filter**: a synthetic pixel labelled ``c`` whose loss exceeds ``tolerance * mu_c``
   (``tolerance`` = 1.25) becomes ignore (255); ignored pixels stay ignored.
3. **Resample**: a filtered pair is kept when it still holds at least one pixel of a *hard*
   class, or when more than ``min_kept_fraction`` (0.8) of *all* its pixels are not ignored
   (``mean(filtered != 255) > 0.8``, strict, pixels ignored in the source mask count as lost).

Hard classes are registry names, or ``auto``: the ``k`` classes with the lowest IoU of the
real-only segmenter on the val split.

The pure functions (:func:`pixel_cross_entropy`, :func:`filter_mask`, :func:`resample_decision`,
:func:`select_hard_classes`) work on arrays; the drivers run them over manifests, write
filtered masks atomically (index-space PNG) and skip finished files, so an interrupted run
resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tisynth.classes import IGNORE_INDEX, ClassRegistry, RegistryError
from tisynth.errors import TisynthError
from tisynth.io import TileSet, read_image, write_image
from tisynth.runs import ItemRecords, RunFolder, file_digest, weights_digest

if TYPE_CHECKING:  # pragma: no cover
    from tisynth.segmentation.pairs import Pair
    from tisynth.segmentation.segmenter import Segmenter

log = logging.getLogger("tisynth.filtering")

FREEMASK_EPS = 1e-5
"""Added to the pixel count of each class in the reference loss (the authors' constant)."""

FILTERED_MASK_DIR = "masks"
LEGACY_FINGERPRINT_FILE = "filter_fingerprint.json"  # the manifest name before run.json


class FilterError(TisynthError, ValueError):
    """Filtering inputs that do not fit together; the message names the row or file."""


@dataclass(frozen=True)
class FilterSettings:
    """The ``filter`` parameter block, typed (conf/base/parameters_filter.yml documents each key)."""

    train_split: str = "train"
    val_split: str | None = "val"
    tolerance: float = 1.25
    min_kept_fraction: float = 0.8
    hard_classes: str | list[str] | None = "auto"
    auto_hard_k: int = 1
    batch_size: int | None = 16
    examples: int = 6
    mlflow: bool = True

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> FilterSettings:
        from tisynth.params import dataclass_from_mapping

        cfg = dataclass_from_mapping(cls, params, FilterError, "filter: unknown key(s)")
        if cfg.tolerance <= 0 or not 0 <= cfg.min_kept_fraction <= 1:
            raise FilterError(f"filter: tolerance must be > 0 and min_kept_fraction in [0, 1], got {cfg.tolerance}, {cfg.min_kept_fraction}")
        if cfg.auto_hard_k < 0 or cfg.examples < 0 or (cfg.batch_size is not None and cfg.batch_size < 1):
            raise FilterError("filter: auto_hard_k and examples must be >= 0 and batch_size >= 1")
        return cfg


# ---------------------------------------------------------------------------- pure functions
def pixel_cross_entropy(logits: np.ndarray, labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Per-pixel cross-entropy ``-log softmax(logits)[label]``; 0 at ignored pixels.

    Args:
        logits: ``K×H×W`` (or ``B×K×H×W``) class scores.
        labels: ``H×W`` (or ``B×H×W``) index-space labels (``0..K-1`` or ``ignore_index``).

    Returns:
        float32 array shaped like ``labels``.
    """
    logits = np.asarray(logits, dtype=np.float32)
    labels = np.asarray(labels)
    batched = logits.ndim == 4
    if not batched:
        logits, labels = logits[None], labels[None]
    if logits.ndim != 4 or labels.shape != (logits.shape[0],) + logits.shape[2:]:
        raise FilterError(f"pixel_cross_entropy: logits {logits.shape} do not match labels {labels.shape}")
    k = logits.shape[1]
    valid = labels != ignore_index
    if (labels[valid] >= k).any():
        bad = np.unique(labels[valid & (labels >= k)])[:10].tolist()
        raise FilterError(f"pixel_cross_entropy: label value(s) {bad} outside 0..{k - 1} and not ignore")
    top = logits.max(axis=1, keepdims=True)
    lse = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
    safe = np.where(valid, labels, 0).astype(np.int64)
    picked = np.take_along_axis(logits, safe[:, None], axis=1)[:, 0]
    loss = np.where(valid, lse - picked, 0.0).astype(np.float32)
    return loss if batched else loss[0]


class ClassLossAccumulator:
    """Sums pixel losses and pixel counts per class over many images (step 1 of the filter)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.sums = np.zeros(self.num_classes, dtype=np.float64)
        self.counts = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, loss: np.ndarray, labels: np.ndarray) -> None:
        labels = np.asarray(labels).reshape(-1)
        loss = np.asarray(loss, dtype=np.float64).reshape(-1)
        if loss.shape != labels.shape:
            raise FilterError(f"ClassLossAccumulator: loss {loss.shape} and labels {labels.shape} differ")
        valid = labels != self.ignore_index
        lab = labels[valid].astype(np.int64)
        if lab.size and lab.max() >= self.num_classes:
            raise FilterError(f"ClassLossAccumulator: label {int(lab.max())} outside 0..{self.num_classes - 1}")
        self.sums += np.bincount(lab, weights=loss[valid], minlength=self.num_classes)
        self.counts += np.bincount(lab, minlength=self.num_classes)

    def mean(self) -> np.ndarray:
        """``mu_c = sum_c / (count_c + 1e-5)`` (0 for classes without pixels)."""
        return self.sums / (self.counts + FREEMASK_EPS)


def class_mean_losses(
    items: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """``mu_c`` from ``(loss map, label map)`` pairs."""
    acc = ClassLossAccumulator(num_classes, ignore_index)
    for loss, labels in items:
        acc.update(loss, labels)
    return acc.mean()


def filter_mask(
    mask: np.ndarray,
    loss: np.ndarray,
    class_mean_loss: Sequence[float] | np.ndarray,
    tolerance: float = 1.25,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """FreeMask rule: pixels of class ``c`` with ``loss > tolerance * mu_c`` become ignore."""
    mask = np.asarray(mask)
    loss = np.asarray(loss)
    mu = np.asarray(class_mean_loss, dtype=np.float64)
    if mask.shape != loss.shape:
        raise FilterError(f"filter_mask: mask {mask.shape} and loss {loss.shape} differ")
    if tolerance <= 0:
        raise FilterError(f"filter_mask: tolerance must be > 0, got {tolerance}")
    valid = mask != ignore_index
    if valid.any() and int(mask[valid].max()) >= mu.size:
        raise FilterError(f"filter_mask: mask class {int(mask[valid].max())} has no reference loss ({mu.size} classes)")
    threshold = np.full(mask.shape, np.inf)
    threshold[valid] = tolerance * mu[mask[valid].astype(np.int64)]
    out = mask.copy()
    out[valid & (loss > threshold)] = ignore_index
    return out


def kept_fraction(filtered: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """Share of all pixels that are not ignored after filtering."""
    filtered = np.asarray(filtered)
    return float((filtered != ignore_index).mean()) if filtered.size else 0.0


@dataclass(frozen=True)
class ResampleDecision:
    """Whether a filtered pair is kept, and why."""

    keep: bool
    kept_fraction: float
    has_hard_class: bool


def resample_decision(
    filtered: np.ndarray,
    hard_classes: Iterable[int],
    min_kept_fraction: float = 0.8,
    ignore_index: int = IGNORE_INDEX,
) -> ResampleDecision:
    """Keep iff the filtered mask holds >= 1 hard-class pixel or ``kept_fraction > min_kept_fraction``."""
    filtered = np.asarray(filtered)
    hard = [int(c) for c in hard_classes]
    has_hard = bool(hard) and bool(np.isin(filtered, hard).any())
    frac = kept_fraction(filtered, ignore_index)
    return ResampleDecision(has_hard or frac > min_kept_fraction, frac, has_hard)


def select_hard_classes(
    spec: str | Sequence[str] | None,
    registry: ClassRegistry,
    val_iou: Sequence[float] | np.ndarray | None = None,
    k: int = 1,
) -> list[int]:
    """Index-space ids of the hard classes.

    Args:
        spec: ``None`` / ``[]`` (no hard class), a list of registry class names, or ``"auto"``.
        registry: the class registry (names are matched case-insensitively).
        val_iou: per-class IoU of the real-only segmenter on val (needed for ``auto``).
        k: how many classes ``auto`` picks (the lowest IoU first; classes with NaN IoU,
            i.e. absent from val, are not candidates).
    """
    if spec is None or (not isinstance(spec, str) and len(spec) == 0):
        return []
    if isinstance(spec, str):
        if spec.strip().lower() != "auto":
            spec = [spec]
        else:
            if val_iou is None:
                raise FilterError("hard_classes: 'auto' needs the per-class val IoU of the real-only segmenter")
            iou = np.asarray(val_iou, dtype=np.float64)
            if iou.size != registry.num_classes:
                raise FilterError(f"hard_classes: {iou.size} IoU values for {registry.num_classes} classes")
            candidates = [i for i in np.argsort(iou, kind="stable") if np.isfinite(iou[i])]
            return sorted(int(i) for i in candidates[: max(0, int(k))])
    try:
        return sorted({registry.index_of(name) for name in spec})
    except RegistryError as exc:
        raise FilterError(f"hard_classes: {exc}") from exc


# ---------------------------------------------------------------------------- drivers
@dataclass(frozen=True)
class SyntheticItem:
    """One synthetic pair to filter: its name, image, source mask and output path."""

    name: str
    image: str
    mask: str
    filtered_mask: str  # relative to the filtered folder


def filtered_mask_path(name: str) -> str:
    """Relative path of a synthetic image's filtered mask: ``masks/<name>.png``."""
    return f"{FILTERED_MASK_DIR}/{name}.png"


def synthetic_items(
    synthetic_manifest: pd.DataFrame, synthetic_images: TileSet | str | Path, tiles: TileSet | str | Path
) -> list[SyntheticItem]:
    """Items from the synthetic manifest (``name``, ``image`` rel. synthetic root, ``mask`` rel. tiles root)."""
    missing = [c for c in ("name", "image", "mask") if c not in synthetic_manifest.columns]
    if missing:
        raise FilterError(f"synthetic_manifest: missing column(s) {missing}; has {list(synthetic_manifest.columns)}")
    names = synthetic_manifest["name"].astype(str)
    dup = names[names.duplicated()].unique().tolist()
    if dup:
        raise FilterError(f"synthetic_manifest: duplicate name(s) {dup[:5]}; names must be unique")
    bad = [n for n in names if not n or "/" in n or "\\" in n or n in (".", "..")]
    if bad:
        raise FilterError(f"synthetic_manifest: name(s) {bad[:5]} cannot be file names")
    no_mask = synthetic_manifest["mask"].isna()
    if no_mask.any():
        raise FilterError(f"synthetic_manifest: rows without a mask, e.g. {names[no_mask].head(3).tolist()}")
    syn_root = synthetic_images.root if isinstance(synthetic_images, TileSet) else Path(synthetic_images)
    tile_root = tiles.root if isinstance(tiles, TileSet) else Path(tiles)
    return [
        SyntheticItem(n, str(syn_root / img), str(tile_root / m), filtered_mask_path(n))
        for n, img, m in zip(names, synthetic_manifest["image"], synthetic_manifest["mask"])
    ]


def compute_class_losses(
    segmenter: Segmenter, pairs: Sequence[Pair], batch_size: int | None = None
) -> pd.DataFrame:
    """Class-wise reference losses ``mu_c`` of ``segmenter`` on real (training) pairs.

    Returns:
        one row per class: ``class_index``, ``class``, ``pixels``, ``loss_sum``, ``mean_loss``.
    """
    if not pairs:
        raise FilterError("compute_class_losses: no real training pairs")
    acc = ClassLossAccumulator(segmenter.num_classes)
    for _, _, mask, logits in segmenter.iter_pairs(pairs, batch_size):
        acc.update(pixel_cross_entropy(logits, mask), mask)
    mu = acc.mean()
    return pd.DataFrame({
        "class_index": np.arange(segmenter.num_classes),
        "class": segmenter.registry.names,
        "pixels": acc.counts,
        "loss_sum": acc.sums,
        "mean_loss": mu,
    })


def class_losses_array(class_losses: pd.DataFrame, num_classes: int) -> np.ndarray:
    """``mu_c`` ordered by class index, from the :func:`compute_class_losses` table."""
    if not {"class_index", "mean_loss"} <= set(class_losses.columns):
        raise FilterError(f"class_losses: need columns class_index, mean_loss; has {list(class_losses.columns)}")
    mu = np.full(num_classes, np.nan)
    for idx, value in zip(class_losses["class_index"], class_losses["mean_loss"]):
        mu[int(idx)] = float(value)
    if np.isnan(mu).any():
        raise FilterError(f"class_losses: no reference loss for class index(es) {np.flatnonzero(np.isnan(mu)).tolist()}")
    return mu


def segmenter_fingerprint(segmenter: Segmenter) -> str:
    """Hash of a segmenter's weights (filtered masks depend on them)."""
    return weights_digest(segmenter.model)


def filter_synthetic_set(
    segmenter: Segmenter,
    items: Sequence[SyntheticItem],
    class_mean_loss: Sequence[float] | np.ndarray,
    out_root: str | Path,
    tolerance: float = 1.25,
    batch_size: int | None = None,
) -> dict[str, int]:
    """Write ``out_root/masks/<name>.png`` (index space) for every item; resumable.

    Files that exist are skipped when ``out_root`` was filtered with the same segmenter,
    reference losses and tolerance (its ``run.json``, :mod:`tisynth.runs`) and from the same
    bytes of the item's image and mask (``out_root/sources/``, :class:`tisynth.runs.ItemRecords`);
    otherwise the earlier masks are moved, untouched, to ``out_root/superseded/`` (all of them
    for other settings, one by one for changed inputs). Each file is written atomically.

    Returns:
        ``{"written": n, "skipped": m}``.
    """
    out_root = Path(out_root)
    mu = np.asarray(class_mean_loss, dtype=np.float64)
    fp = {"segmenter": segmenter_fingerprint(segmenter), "tolerance": float(tolerance),
          "class_mean_loss": [round(float(v), 10) for v in mu]}
    # masks of other settings (or of unknown origin) are set aside before the new manifest is
    # written, so an interruption can never leave stale masks to be skipped
    RunFolder.open(out_root, fp, entries=[FILTERED_MASK_DIR, ItemRecords.DIR], legacy_manifest=LEGACY_FINGERPRINT_FILE)
    # a mask is finished work only for the bytes it was made from: an image sampled anew under
    # the same name (another generator, other sampler settings) is filtered again
    records = ItemRecords(out_root)
    wanted = {it.name: f"{file_digest(it.image)}:{file_digest(it.mask)}" for it in items}
    todo = [it for it in items if not records.is_done(it.name, out_root / it.filtered_mask, wanted[it.name])]
    stale = sum((out_root / it.filtered_mask).is_file() for it in todo)
    if stale:
        log.info("%d filtered masks were made from other bytes of their image or mask, or not finished; "
                 "filtering them again", stale)
    skipped = len(items) - len(todo)
    bs = batch_size or segmenter.config.inference.batch_size
    written = 0
    batch: list[tuple[SyntheticItem, np.ndarray, np.ndarray]] = []

    def flush() -> None:
        nonlocal written
        logits = segmenter.predict_logits(np.stack([b[1] for b in batch]), bs)
        for (item, _, mask), lg in zip(batch, logits):
            filtered = filter_mask(mask, pixel_cross_entropy(lg, mask), mu, tolerance)
            records.begin(item.name, out_root / item.filtered_mask)
            write_image(out_root / item.filtered_mask, filtered)
            records.finish(item.name, wanted[item.name])
            written += 1
        batch.clear()

    from tisynth.segmentation.pairs import read_index_mask

    for n, item in enumerate(todo, 1):
        image = read_image(item.image)
        mask = read_index_mask(item.mask, segmenter.num_classes)
        if mask.shape != image.shape[:2]:
            raise FilterError(f"{item.image}: synthetic image size {image.shape[:2]} differs from its mask "
                              f"{item.mask} {mask.shape}")
        if batch and (image.shape != batch[0][1].shape or len(batch) >= bs):
            flush()
        batch.append((item, image, mask))
        if n % 200 == 0:
            log.info("filtered %d/%d synthetic masks", n, len(todo))
    if batch:
        flush()
    log.info("filtered masks: %d written, %d already done", written, skipped)
    return {"written": written, "skipped": skipped}


def resample_filtered_set(
    synthetic_manifest: pd.DataFrame,
    items: Sequence[SyntheticItem],
    filtered_root: str | Path,
    registry: ClassRegistry,
    hard_classes: Sequence[int],
    min_kept_fraction: float = 0.8,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Apply the resampling rule to the filtered masks and gather statistics.

    Returns:
        ``(filtered_manifest, class_statistics, summary)``: the synthetic manifest with
        ``filtered_mask``, ``kept_fraction``, ``has_hard_class`` and ``kept``; one row per
        class with source / filtered pixel counts (``ignored_fraction`` = share of the class's
        synthetic pixels set to ignore) and pixels in kept pairs; summary numbers.
    """
    from tisynth.segmentation.pairs import read_index_mask

    k = registry.num_classes
    filtered_root = Path(filtered_root)
    source_px = np.zeros(k, dtype=np.int64)
    removed_px = np.zeros(k, dtype=np.int64)
    kept_px = np.zeros(k, dtype=np.int64)
    fractions, hards, keeps = [], [], []
    for item in items:
        path = filtered_root / item.filtered_mask
        if not path.is_file():
            raise FilterError(f"{path}: filtered mask of {item.name!r} missing; run the filter step first")
        source = read_index_mask(item.mask, k)
        filtered = read_index_mask(path, k)
        if source.shape != filtered.shape:
            raise FilterError(f"{path}: shape {filtered.shape} differs from its source mask {item.mask} {source.shape}")
        valid = source != IGNORE_INDEX
        src_counts = np.bincount(source[valid].astype(np.int64), minlength=k)
        lost = valid & (filtered == IGNORE_INDEX)
        source_px += src_counts
        removed_px += np.bincount(source[lost].astype(np.int64), minlength=k)
        decision = resample_decision(filtered, hard_classes, min_kept_fraction)
        if decision.keep:
            kept_px += np.bincount(filtered[filtered != IGNORE_INDEX].astype(np.int64), minlength=k)
        fractions.append(decision.kept_fraction)
        hards.append(decision.has_hard_class)
        keeps.append(decision.keep)
    manifest = synthetic_manifest.copy()
    by_name = {it.name: it for it in items}
    manifest["filtered_mask"] = [by_name[str(n)].filtered_mask for n in manifest["name"]]
    manifest["kept_fraction"] = np.asarray(fractions, dtype=np.float64)
    manifest["has_hard_class"] = np.asarray(hards, dtype=bool)
    manifest["kept"] = np.asarray(keeps, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        ignored = np.where(source_px > 0, removed_px / np.maximum(source_px, 1), np.nan)
    hard_set = set(int(c) for c in hard_classes)
    stats = pd.DataFrame({
        "class_index": np.arange(k),
        "class": registry.names,
        "hard": [i in hard_set for i in range(k)],
        "source_pixels": source_px,
        "filtered_pixels": removed_px,
        "ignored_fraction": ignored,
        "pixels_in_kept_pairs": kept_px,
    })
    n = len(items)
    total_src = int(source_px.sum())
    summary = {
        "synthetic_pairs": float(n),
        "kept_pairs": float(sum(keeps)),
        "kept_ratio": float(sum(keeps) / n) if n else float("nan"),
        "kept_by_hard_class": float(sum(hards)),
        "mean_kept_fraction": float(np.mean(fractions)) if n else float("nan"),
        "ignored_fraction": float(removed_px.sum() / total_src) if total_src else float("nan"),
    }
    return manifest, stats, summary


def filter_metrics(summary: Mapping[str, float], class_stats: pd.DataFrame, prefix: str | None = None) -> dict[str, Any]:
    """MLflow metrics (``{name: {"value", "step"}}``) from the resampling statistics.

    Names are unprefixed by default: the catalog's ``MlflowMetricsHistoryDataset`` adds its own
    ``prefix``.
    """
    lead = f"{prefix}." if prefix else ""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if np.isfinite(value):
            out[f"{lead}{key}"] = {"value": float(value), "step": 0}
    for name, value in zip(class_stats["class"], class_stats["ignored_fraction"]):
        if np.isfinite(value):
            safe = "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in str(name))
            out[f"{lead}ignored_fraction.{safe}"] = {"value": float(value), "step": 0}
    return out
