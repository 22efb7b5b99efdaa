"""Comparison tables and figures from long result tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from tisynth.segmentation import report
from tisynth.segmentation.experiment import confusion_rows


def _results() -> pd.DataFrame:
    rows = []
    values = {("baseline", 0): 0.50, ("baseline", 1): 0.54, ("augmented", 0): 0.55, ("augmented", 1): 0.61}
    for (variant, seed), miou in values.items():
        rows.append((variant, seed, "test", "mIoU", "", miou))
        rows.append((variant, seed, "test", "OA", "", miou + 0.2))
        rows.append((variant, seed, "test", "mAcc", "", miou + 0.1))
        for k, name in enumerate(["bare", "vegetation", "water"]):
            rows.append((variant, seed, "test", "IoU", name, miou + 0.1 * (k - 1)))
    return pd.DataFrame(rows, columns=list(report.RESULT_COLUMNS))


def test_comparison_table_mean_std_and_paired_gain():
    table = report.comparison_table(_results())
    row = table[table["metric"] == "mIoU"].iloc[0]
    assert row["baseline_mean"] == pytest.approx(0.52)
    assert row["augmented_mean"] == pytest.approx(0.58)
    assert row["baseline_std"] == pytest.approx(np.std([0.50, 0.54], ddof=1))
    assert row["delta_mean"] == pytest.approx(0.06)  # per-seed gains 0.05 and 0.07
    assert row["delta_std"] == pytest.approx(np.std([0.05, 0.07], ddof=1))
    assert row["n_seeds"] == 2
    half = 12.706 * np.std([0.05, 0.07], ddof=1) / np.sqrt(2)  # paired t, 1 degree of freedom
    assert (row["delta_ci_low"], row["delta_ci_high"]) == pytest.approx((0.06 - half, 0.06 + half))
    assert list(table["metric"]) == ["OA", "mIoU", "mAcc"]


def test_t_quantiles_and_the_paired_interval():
    assert report.t_quantile_975(4) == pytest.approx(2.776)
    assert report.t_quantile_975(25) == pytest.approx(2.060, abs=2e-3)  # between tabulated 20 and 30
    assert report.t_quantile_975(10_000) == pytest.approx(1.960, abs=2e-3)
    lo, hi = report.paired_interval([0.01, 0.02, 0.03, 0.02, 0.02])
    assert lo < 0.02 < hi and hi - lo == pytest.approx(2 * 2.776 * np.std([0.01, 0.02, 0.03, 0.02, 0.02], ddof=1) / np.sqrt(5))
    assert np.isnan(report.paired_interval([0.5])[0])
    with pytest.raises(ValueError):
        report.t_quantile_975(0)


def test_markdown_report(registry):
    res = _results()
    md = report.comparison_markdown(report.comparison_table(res), report.per_class_table(res), notes=["equal budget"])
    assert "## test (2 seeds, percent)" in md
    assert "| mIoU | 52.00 ± 2.83 | 58.00 ± 4.24 | +6.00 ± 1.41 | [-6.71, +18.71] |" in md  # 6 ± 12.706 * 1.41 / √2
    assert "95 % paired-t interval" in md
    assert "| vegetation |" in md and "- equal budget" in md


def test_figures_build(registry):
    res = _results()
    fig = report.plot_per_class_iou(res, registry)
    assert isinstance(fig, Figure)
    bars = [p for p in fig.axes[0].patches if p.get_height() > 0]
    assert len(bars) == 2 * registry.num_classes
    # bar colours are the registry's class colours
    colours = {tuple(np.round(p.get_facecolor()[:3], 3)) for p in bars}
    assert tuple(np.round(np.array(registry.palette[2]) / 255, 3)) in colours
    long = pd.DataFrame(confusion_rows("baseline", 0, "test", np.array([[5, 1, 0], [0, 3, 0], [1, 0, 2]])))
    m = report.confusion_from_long(long, 3, variant="baseline")
    np.testing.assert_array_equal(m, [[5, 1, 0], [0, 3, 0], [1, 0, 2]])
    assert isinstance(report.plot_confusion_matrices({"test / baseline": m}, registry), Figure)
    img = np.zeros((8, 8, 3), np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[0] = 255
    fig = report.plot_prediction_examples([img], [mask], {"baseline": [mask], "augmented": [mask]}, registry)
    assert [ax.get_title() for ax in fig.axes[:4]] == ["image", "truth", "baseline", "augmented"]
    assert isinstance(report.plot_filter_examples([("a", img, mask, mask, True, 0.9)], registry), Figure)
