"""Seed spread against tile-sampling error (tisynth.segmentation.spread)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tisynth.segmentation.spread import bootstrap_miou, last_checkpoint, miou, spread_table, tile_confusions


def _tile(tp: list[int], wrong: int = 0) -> np.ndarray:
    c = np.diag(tp).astype(np.int64)
    c[0, 1] = wrong
    return c


def test_bootstrap_of_identical_tiles_has_no_sampling_error():
    conf = np.stack([_tile([50, 30, 20], wrong=5)] * 12)
    boot = bootstrap_miou(conf, n=200, seed=1)
    assert boot.shape == (200,)
    assert np.allclose(boot, miou(conf.sum(axis=0)))


def test_bootstrap_error_falls_with_more_tiles():
    rng = np.random.default_rng(0)

    def tiles(n: int) -> np.ndarray:  # tiles where class 2 is read well on some and badly on others
        return np.stack([_tile([40, 40, int(rng.integers(0, 20))], wrong=int(rng.integers(0, 30))) for _ in range(n)])

    small = bootstrap_miou(tiles(10), n=400, seed=0).std()
    large = bootstrap_miou(tiles(250), n=400, seed=0).std()
    assert large < small / 2  # about 1/sqrt(25) of it


def test_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError, match="N×K×K"):
        bootstrap_miou(np.zeros((0, 3, 3)))
    with pytest.raises(ValueError, match="n must be"):
        bootstrap_miou(np.stack([_tile([1, 1, 1])]), n=1)


def test_spread_table_puts_seed_spread_beside_sampling_error():
    readings = pd.DataFrame({
        "protocol": "p", "checkpoint": "selected", "eval_set": "target test", "seed": [0, 1, 2, 3],
        "tiles": 61, "mIoU": [0.40, 0.50, 0.60, 0.50], "boot_se": [0.02, 0.02, 0.02, 0.02]})
    t = spread_table(readings)
    assert len(t) == 1
    row = t.iloc[0]
    assert row["seeds"] == 4 and row["tiles"] == 61
    assert row["mIoU_mean"] == pytest.approx(0.5)
    assert row["mIoU_std_over_seeds"] == pytest.approx(np.std([0.4, 0.5, 0.6, 0.5], ddof=1))
    assert row["ratio"] == pytest.approx(row["mIoU_std_over_seeds"] / 0.02)
    with pytest.raises(ValueError, match="boot_se"):
        spread_table(readings.drop(columns="boot_se"))


def test_tile_confusions_one_matrix_per_tile():
    class Fixed:  # predicts class 1 everywhere
        num_classes = 3

        def iter_pairs(self, pairs, batch_size=None):
            for i, pair in enumerate(pairs):
                mask = np.full((4, 4), i % 3, dtype=np.uint8)
                logits = np.zeros((3, 4, 4), dtype=np.float32)
                logits[1] = 1.0
                yield pair, None, mask, logits

    conf = tile_confusions(Fixed(), [("a", "b")] * 3)
    assert conf.shape == (3, 3, 3)
    assert [int(c[i % 3, 1]) for i, c in enumerate(conf)] == [16, 16, 16]
    assert conf.sum() == 48


def test_last_checkpoint_is_the_highest_iteration(tmp_path):
    assert last_checkpoint(tmp_path) is None
    for name in ("iter_200.pth", "iter_1000.pth", "best_mIoU_iter_400.pth", "iter_x.pth"):
        (tmp_path / name).write_bytes(b"")
    assert last_checkpoint(tmp_path).name == "iter_1000.pth"


def test_spread_figure_has_a_panel_per_eval_set_and_a_line_per_protocol():
    from tisynth.segmentation.spread import spread_figure

    rows = [{"protocol": p, "checkpoint": "selected", "eval_set": e, "seed": s, "tiles": 10, "mIoU": 0.5 + 0.01 * s,
             "boot_se": 0.02} for p in ("a", "b") for e in ("source test", "target test") for s in range(3)]
    fig = spread_figure(pd.DataFrame(rows))
    axes = fig.axes
    assert len(axes) == 2 and axes[1].get_title() == "target test (10 tiles)"
    assert len(axes[0].get_legend().get_texts()) == 2


def test_protocol_differences_are_paired_by_seed():
    from tisynth.segmentation.spread import differences_markdown, protocol_differences

    rows = [{"protocol": "a", "checkpoint": "selected", "eval_set": "t", "seed": s, "mIoU": 0.5} for s in range(4)]
    rows += [{"protocol": "b", "checkpoint": "selected", "eval_set": "t", "seed": s, "mIoU": 0.5 + 0.1 + 0.01 * s}
             for s in range(3)]  # seed 3 missing: left out of the pairing
    t = protocol_differences(pd.DataFrame(rows), baseline="a")
    assert len(t) == 1
    r = t.iloc[0]
    assert r["seeds"] == 3 and r["diff_mean"] == pytest.approx(0.11)
    assert r["ci_low"] < 0.11 < r["ci_high"]
    assert r["per_seed"] == [10.0, 11.0, 12.0]
    assert "+11.00" in differences_markdown(t)
    assert protocol_differences(pd.DataFrame(rows), baseline="zzz").empty
