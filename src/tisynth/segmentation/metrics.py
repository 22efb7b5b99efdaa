"""Semantic segmentation metrics from a confusion matrix.

All metrics are computed in index space (classes ``0..K-1``; pixels whose *truth* is the
ignore index 255 are excluded everywhere). Values are fractions in ``[0, 1]`` (not percent).

Definitions (``C`` is the K×K confusion matrix, rows = truth, columns = prediction):

* ``OA`` (mmseg's ``aAcc``): ``trace(C) / C.sum()``, the overall pixel accuracy.
* ``IoU_c = C[c, c] / (row_c + col_c - C[c, c])``.
* ``Acc_c = C[c, c] / row_c`` (per-class recall, what mmseg calls ``Acc``).
* ``mIoU`` and ``mAcc`` are the means of the per-class values **over the classes where they
  are defined**.

Absent classes are handled explicitly:

* a class absent from both truth and prediction has ``IoU = NaN`` and ``Acc = NaN`` and is left
  out of ``mIoU`` and ``mAcc`` (it says nothing about the model);
* a class absent from the truth but predicted somewhere has ``IoU = 0`` (every such pixel is a
  false positive) and ``Acc = NaN`` (recall is undefined without positives); it lowers
  ``mIoU`` but not ``mAcc``.

This matches mmseg's ``IoUMetric`` (which uses ``nanmean``), so numbers are comparable with
published mmseg results (which print percent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tisynth.classes import IGNORE_INDEX
from tisynth.errors import TisynthError


class MetricsError(TisynthError, ValueError):
    """Inputs of a metric computation that cannot be compared (shapes, class ranges)."""


def confusion_matrix(
    truth: np.ndarray,
    prediction: np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """K×K pixel confusion matrix (int64), rows = truth, columns = prediction.

    Pixels whose truth equals ``ignore_index`` are skipped. Truth values other than
    ``0..K-1`` and ``ignore_index``, or predictions outside ``0..K-1`` at counted pixels, are
    errors (they would silently vanish from the matrix otherwise).
    """
    truth = np.asarray(truth)
    prediction = np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise MetricsError(f"confusion_matrix: truth shape {truth.shape} != prediction shape {prediction.shape}")
    if num_classes < 1:
        raise MetricsError(f"confusion_matrix: num_classes must be >= 1, got {num_classes}")
    t = truth.reshape(-1).astype(np.int64)
    p = prediction.reshape(-1).astype(np.int64)
    valid = t != ignore_index
    t, p = t[valid], p[valid]
    if t.size:
        if t.min() < 0 or t.max() >= num_classes:
            bad = np.unique(t[(t < 0) | (t >= num_classes)])[:10].tolist()
            raise MetricsError(
                f"confusion_matrix: truth value(s) {bad} are neither a class (0..{num_classes - 1}) "
                f"nor the ignore index {ignore_index}"
            )
        if p.min() < 0 or p.max() >= num_classes:
            bad = np.unique(p[(p < 0) | (p >= num_classes)])[:10].tolist()
            raise MetricsError(f"confusion_matrix: prediction value(s) {bad} outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class SegmentationMetrics:
    """Metrics of one evaluation, derived from its confusion matrix.

    Attributes:
        confusion: K×K int64 matrix, rows = truth, columns = prediction.
        class_names: names of the K classes (index-space order).
        oa: overall accuracy (aAcc); NaN when no pixel was counted.
        miou: mean IoU over classes with a defined IoU.
        macc: mean per-class accuracy over classes present in the truth.
        iou: per-class IoU (NaN = class absent from truth and prediction).
        acc: per-class accuracy / recall (NaN = class absent from truth).
    """

    confusion: np.ndarray
    class_names: tuple[str, ...]
    oa: float
    miou: float
    macc: float
    iou: np.ndarray = field(repr=False)
    acc: np.ndarray = field(repr=False)

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def pixels(self) -> int:
        return int(self.confusion.sum())

    def summary(self) -> dict[str, float]:
        """``{"OA", "mIoU", "mAcc"}`` as floats."""
        return {"OA": float(self.oa), "mIoU": float(self.miou), "mAcc": float(self.macc)}

    def to_dict(self) -> dict[str, Any]:
        """Flat dictionary: OA, mIoU, mAcc, ``IoU.<class>``, ``Acc.<class>`` (NaN kept)."""
        out: dict[str, Any] = self.summary()
        for name, value in zip(self.class_names, self.iou):
            out[f"IoU.{name}"] = float(value)
        for name, value in zip(self.class_names, self.acc):
            out[f"Acc.{name}"] = float(value)
        return out

    def per_class(self) -> list[dict[str, Any]]:
        """One record per class: index, class, IoU, Acc, truth and predicted pixel counts."""
        rows = self.confusion.sum(axis=1)
        cols = self.confusion.sum(axis=0)
        return [
            {
                "class_index": i,
                "class": name,
                "IoU": float(self.iou[i]),
                "Acc": float(self.acc[i]),
                "truth_pixels": int(rows[i]),
                "predicted_pixels": int(cols[i]),
            }
            for i, name in enumerate(self.class_names)
        ]


def metrics_from_confusion(
    confusion: np.ndarray, class_names: Sequence[str] | None = None
) -> SegmentationMetrics:
    """OA, mIoU, mAcc and per-class IoU / accuracy from a K×K confusion matrix.

    See the module docstring for the treatment of absent classes.
    """
    c = np.asarray(confusion, dtype=np.int64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise MetricsError(f"metrics_from_confusion: expected a square matrix, got shape {c.shape}")
    k = c.shape[0]
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(k))
    if len(names) != k:
        raise MetricsError(f"metrics_from_confusion: {len(names)} class names for a {k}×{k} matrix")
    tp = np.diag(c).astype(np.float64)
    truth = c.sum(axis=1).astype(np.float64)
    pred = c.sum(axis=0).astype(np.float64)
    union = truth + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
        acc = np.where(truth > 0, tp / np.where(truth > 0, truth, 1), np.nan)
    total = c.sum()
    oa = float(tp.sum() / total) if total > 0 else float("nan")
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    macc = float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")
    return SegmentationMetrics(c, names, oa, miou, macc, iou, acc)


def compute_metrics(
    truth: np.ndarray,
    prediction: np.ndarray,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> SegmentationMetrics:
    """Confusion matrix of ``truth`` vs ``prediction`` and the metrics derived from it."""
    return metrics_from_confusion(confusion_matrix(truth, prediction, num_classes, ignore_index), class_names)


class ConfusionAccumulator:
    """Accumulates a confusion matrix over many (truth, prediction) pairs."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, ignore_index: int = IGNORE_INDEX):
        self.num_classes = int(num_classes)
        self.class_names = tuple(class_names) if class_names is not None else None
        self.ignore_index = ignore_index
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, truth: np.ndarray, prediction: np.ndarray) -> None:
        self.confusion += confusion_matrix(truth, prediction, self.num_classes, self.ignore_index)

    def result(self) -> SegmentationMetrics:
        return metrics_from_confusion(self.confusion, self.class_names)
