"""tisynth.segmentation.metrics against hand-computed confusion matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tisynth.segmentation.metrics import (
    ConfusionAccumulator,
    MetricsError,
    compute_metrics,
    confusion_matrix,
    metrics_from_confusion,
)

# 3 classes; 255 = ignore. Row-major 3x4 maps.
TRUTH = np.array([[0, 0, 1, 1],
                  [0, 2, 2, 255],
                  [1, 1, 255, 0]])
PRED = np.array([[0, 1, 1, 1],
                 [0, 2, 0, 2],
                 [1, 0, 1, 0]])


def test_confusion_matrix_by_hand():
    # counted pixels (truth, pred): (0,0)x3 (0,1)x1 (1,1)x3 (1,0)x1 (2,2)x1 (2,0)x1; two ignored pixels skipped
    expected = np.array([[3, 1, 0],
                         [1, 3, 0],
                         [1, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(TRUTH, PRED, 3), expected)


def test_metrics_by_hand():
    m = compute_metrics(TRUTH, PRED, 3, ["a", "b", "c"])
    # OA = 7 / 10; IoU0 = 3 / (4 + 5 - 3) = 0.5; IoU1 = 3 / (4 + 4 - 3) = 0.6; IoU2 = 1 / (2 + 1 - 1) = 0.5
    assert m.oa == pytest.approx(0.7)
    np.testing.assert_allclose(m.iou, [0.5, 0.6, 0.5])
    np.testing.assert_allclose(m.acc, [0.75, 0.75, 0.5])
    assert m.miou == pytest.approx((0.5 + 0.6 + 0.5) / 3)
    assert m.macc == pytest.approx((0.75 + 0.75 + 0.5) / 3)
    d = m.to_dict()
    assert d["IoU.b"] == pytest.approx(0.6) and d["Acc.c"] == pytest.approx(0.5)
    assert [r["truth_pixels"] for r in m.per_class()] == [4, 4, 2]
    assert [r["predicted_pixels"] for r in m.per_class()] == [5, 4, 1]


def test_absent_classes_are_nan_and_excluded():
    # class 2 absent from truth and prediction; class 3 absent from truth but predicted once
    c = np.array([[5, 1, 0, 1],
                  [0, 3, 0, 0],
                  [0, 0, 0, 0],
                  [0, 0, 0, 0]])
    m = metrics_from_confusion(c)
    assert math.isnan(m.iou[2]) and math.isnan(m.acc[2])
    assert m.iou[3] == 0.0 and math.isnan(m.acc[3])
    # IoU0 = 5/(7+5-5) = 5/7, IoU1 = 3/(3+4-3) = 3/4; mean over the defined ones (0, 1, 3)
    assert m.miou == pytest.approx((5 / 7 + 3 / 4 + 0.0) / 3)
    assert m.macc == pytest.approx((5 / 7 + 1.0) / 2)
    assert m.oa == pytest.approx(8 / 10)


def test_empty_confusion_gives_nan_not_error():
    m = metrics_from_confusion(np.zeros((2, 2), dtype=np.int64))
    assert math.isnan(m.oa) and math.isnan(m.miou) and math.isnan(m.macc)


def test_accumulator_equals_one_big_matrix():
    acc = ConfusionAccumulator(3)
    acc.update(TRUTH[:2], PRED[:2])
    acc.update(TRUTH[2:], PRED[2:])
    np.testing.assert_array_equal(acc.confusion, confusion_matrix(TRUTH, PRED, 3))
    assert acc.result().miou == pytest.approx(compute_metrics(TRUTH, PRED, 3).miou)


@pytest.mark.parametrize(
    "truth, pred, match",
    [
        (np.array([[0, 3]]), np.array([[0, 0]]), "truth value"),
        (np.array([[0, 1]]), np.array([[0, 7]]), "prediction value"),
        (np.array([[0, 1]]), np.array([[0, 1, 1]]), "shape"),
    ],
)
def test_invalid_inputs_raise(truth, pred, match):
    with pytest.raises(MetricsError, match=match):
        confusion_matrix(truth, pred, 3)


def test_prediction_at_ignored_pixel_is_not_counted():
    truth = np.array([[255, 0]])
    pred = np.array([[200, 0]])  # anything may be predicted where the truth is ignored
    np.testing.assert_array_equal(confusion_matrix(truth, pred, 2), [[1, 0], [0, 0]])
