"""FreeMask filter and TISynth resampling rules, on hand-made arrays and through the drivers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tisynth import filtering
from tisynth.classes import IGNORE_INDEX
from tisynth.io import read_raster

from .toydata import manifest_pairs, synthetic_set

I = IGNORE_INDEX


def test_pixel_cross_entropy_by_hand():
    # two classes, logits (0, ln 3) -> softmax (1/4, 3/4)
    logits = np.zeros((2, 1, 3), dtype=np.float32)
    logits[1] = math.log(3.0)
    labels = np.array([[0, 1, I]])
    loss = filtering.pixel_cross_entropy(logits, labels)
    np.testing.assert_allclose(loss, [[math.log(4.0), -math.log(0.75), 0.0]], rtol=1e-6)
    # batched form agrees, and extreme logits stay finite
    big = np.stack([logits * 1000, logits])
    out = filtering.pixel_cross_entropy(big, np.stack([labels, labels]))
    assert out.shape == (2, 1, 3) and np.isfinite(out).all()
    with pytest.raises(filtering.FilterError, match="outside"):
        filtering.pixel_cross_entropy(logits, np.array([[0, 2, 1]]))


def test_class_mean_loss_uses_the_freemask_epsilon():
    loss = np.array([[1.0, 3.0, 5.0, 9.0]])
    labels = np.array([[0, 0, 1, I]])
    mu = filtering.class_mean_losses([(loss, labels)], num_classes=3)
    assert mu[0] == pytest.approx(4.0 / (2 + 1e-5))
    assert mu[1] == pytest.approx(5.0 / (1 + 1e-5))
    assert mu[2] == 0.0  # no training pixel: 0 / 1e-5


def test_filter_rule_on_a_hand_made_loss_map():
    mu = np.array([1.0, 2.0, 0.0])  # class 2 never seen in training
    mask = np.array([[0, 0, 0, 1],
                     [1, 1, I, 2],
                     [2, 0, 1, 1]], dtype=np.uint8)
    loss = np.array([[1.24, 1.25, 1.26, 2.4],
                     [2.6, 9.0, 99.0, 0.0],
                     [0.1, 0.0, 2.5, 2.51]])
    out = filtering.filter_mask(mask, loss, mu, tolerance=1.25)
    expected = np.array([[0, 0, I, 1],   # 1.25 is not > 1.25 (strict); 1.26 > 1.25 -> ignore
                         [I, I, I, 2],   # class 1 threshold 2.5; ignore stays ignore; loss 0 is not > 0
                         [I, 0, 1, I]], dtype=np.uint8)  # class 2 threshold 0: any positive loss goes
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == mask.dtype and not np.shares_memory(out, mask)
    # a larger tolerance filters less
    assert (filtering.filter_mask(mask, loss, mu, 4.0) == I).sum() < (out == I).sum()
    with pytest.raises(filtering.FilterError, match="differ"):
        filtering.filter_mask(mask, loss[:2], mu)


def test_resample_rule():
    hard = [2]
    # 10 pixels; 2 ignored -> kept fraction exactly 0.8, which is not > 0.8
    at_boundary = np.array([0, 0, 0, 0, 0, 0, 1, 1, I, I], dtype=np.uint8)
    d = filtering.resample_decision(at_boundary, hard, 0.8)
    assert (d.keep, d.kept_fraction, d.has_hard_class) == (False, pytest.approx(0.8), False)
    # one pixel more survives -> kept by fraction
    assert filtering.resample_decision(np.where(np.arange(10) == 8, 1, at_boundary), hard, 0.8).keep
    # mostly ignored but a hard-class pixel survives -> kept by hard class
    sparse = np.array([I, I, I, I, I, I, I, I, 2, 0], dtype=np.uint8)
    d = filtering.resample_decision(sparse, hard, 0.8)
    assert d.keep and d.has_hard_class and d.kept_fraction == pytest.approx(0.2)
    # a hard class that was filtered away does not count
    assert not filtering.resample_decision(np.array([I, I, I, 0]), hard, 0.8).keep
    # no hard classes: only the fraction decides
    assert not filtering.resample_decision(sparse, [], 0.8).keep


def test_select_hard_classes(registry):
    iou = np.array([0.9, 0.2, np.nan])
    assert filtering.select_hard_classes("auto", registry, iou, k=1) == [1]
    assert filtering.select_hard_classes("auto", registry, iou, k=5) == [0, 1]  # NaN (absent) never chosen
    assert filtering.select_hard_classes(["Water", "bare"], registry) == [0, 2]
    assert filtering.select_hard_classes([], registry) == []
    assert filtering.select_hard_classes(None, registry) == []
    with pytest.raises(filtering.FilterError, match="unknown class 'forest'"):
        filtering.select_hard_classes(["forest"], registry)
    with pytest.raises(filtering.FilterError, match="needs the per-class val IoU"):
        filtering.select_hard_classes("auto", registry)


def test_filter_and_resample_drivers(tmp_path, trained, toy_tiles, registry):
    seg, _ = trained
    tiles, manifest = toy_tiles
    syn, syn_manifest = synthetic_set(tmp_path / "syn", tiles, manifest)
    losses = filtering.compute_class_losses(seg, manifest_pairs(tiles.root, manifest, "train"))
    assert list(losses.columns) == ["class_index", "class", "pixels", "loss_sum", "mean_loss"]
    assert (losses["pixels"] > 0).all()
    np.testing.assert_allclose(losses["mean_loss"], losses["loss_sum"] / (losses["pixels"] + 1e-5))
    mu = filtering.class_losses_array(losses, registry.num_classes)

    items = filtering.synthetic_items(syn_manifest, syn, tiles)
    out = tmp_path / "filtered"
    stats = filtering.filter_synthetic_set(seg, items, mu, out, tolerance=1.25)
    assert stats == {"written": 6, "skipped": 0}
    for it in items:
        filtered = read_raster(out / it.filtered_mask)
        source = tiles.read_mask(it.mask)
        assert filtered.dtype == np.uint8 and filtered.shape == source.shape
        changed = filtered != source
        assert (filtered[changed] == I).all()  # filtering only ever turns pixels into ignore
    # the contradicting images lose far more pixels than the faithful ones
    lost = [(read_raster(out / it.filtered_mask) == I).mean() for it in items]
    assert min(lost[4:]) > max(lost[:4]) + 0.2

    # resumable: a second run writes nothing; a removed file is redone
    assert filtering.filter_synthetic_set(seg, items, mu, out, tolerance=1.25) == {"written": 0, "skipped": 6}
    (out / items[0].filtered_mask).unlink()
    # a run killed inside an atomic write left its hidden temporary file; the rerun removes it
    stale = (out / items[0].filtered_mask).with_name(f".{Path(items[0].filtered_mask).stem}.0badc0de.tmp.png")
    stale.write_bytes(b"")
    assert filtering.filter_synthetic_set(seg, items, mu, out, tolerance=1.25) == {"written": 1, "skipped": 5}
    assert not stale.exists()
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(Path(it.filtered_mask).name for it in items)
    # an image sampled anew under the same name (another generator) is filtered again, the others are
    # not; the mask made from the old image is kept aside
    old_mask = (out / items[0].filtered_mask).read_bytes()
    shutil.copyfile(items[4].image, items[0].image)
    assert filtering.filter_synthetic_set(seg, items, mu, out, tolerance=1.25) == {"written": 1, "skipped": 5}
    (kept,) = (out / "superseded" / "changed-inputs").rglob("*.png")
    assert kept.read_bytes() == old_mask and kept.relative_to(out / "superseded" / "changed-inputs").parts[1:] == \
        Path(items[0].filtered_mask).parts
    fresh = tmp_path / "fresh"
    filtering.filter_synthetic_set(seg, items[:1], mu, fresh, tolerance=1.25)
    assert (out / items[0].filtered_mask).read_bytes() == (fresh / items[0].filtered_mask).read_bytes()
    assert filtering.filter_synthetic_set(seg, items, mu, out, tolerance=1.25) == {"written": 0, "skipped": 6}
    # masks with no record (an earlier version kept none) are taken as they are, and recorded
    shutil.rmtree(out / "sources")
    assert filtering.filter_synthetic_set(seg, items, mu, out, tolerance=1.25) == {"written": 0, "skipped": 6}
    assert len(list((out / "sources").iterdir())) == 6
    # other settings: every mask is redone, and the earlier masks are kept aside, byte for byte
    before = {p.name: p.read_bytes() for p in (out / "masks").iterdir()}
    assert filtering.filter_synthetic_set(seg, items, mu, out, tolerance=3.0)["written"] == 6
    (aside,) = [p for p in (out / "superseded").iterdir() if p.name != "changed-inputs"]
    assert {p.name: p.read_bytes() for p in (aside / "masks").iterdir()} == before
    assert json.loads((aside / "run.json").read_text())["fingerprint"]["tolerance"] == 1.25

    table, class_stats, summary = filtering.resample_filtered_set(syn_manifest, items, out, registry, [], 0.8)
    assert list(table.columns[-4:]) == ["filtered_mask", "kept_fraction", "has_hard_class", "kept"]
    assert table["filtered_mask"].tolist() == [f"masks/{n}.png" for n in syn_manifest["name"]]
    expected_keep = [(read_raster(out / it.filtered_mask) != I).mean() > 0.8 for it in items]
    assert table["kept"].tolist() == expected_keep
    assert summary["kept_pairs"] == sum(expected_keep) and summary["synthetic_pairs"] == 6
    assert ((class_stats["filtered_pixels"] <= class_stats["source_pixels"]).all())
    total_lost = sum(int(((read_raster(out / it.filtered_mask) == I) & (tiles.read_mask(it.mask) != I)).sum())
                     for it in items)
    assert class_stats["filtered_pixels"].sum() == total_lost
    metrics = filtering.filter_metrics(summary, class_stats)
    assert metrics["kept_pairs"] == {"value": float(sum(expected_keep)), "step": 0}
    assert "filter.kept_pairs" in filtering.filter_metrics(summary, class_stats, prefix="filter")


def test_synthetic_manifest_problems_are_named(tmp_path, toy_tiles):
    tiles, _ = toy_tiles
    bad = pd.DataFrame({"name": ["a", "a"], "image": ["x.png", "y.png"], "mask": ["m.png", "m.png"]})
    with pytest.raises(filtering.FilterError, match="duplicate name"):
        filtering.synthetic_items(bad, tmp_path, tiles)
    with pytest.raises(filtering.FilterError, match="missing column"):
        filtering.synthetic_items(bad.drop(columns="mask"), tmp_path, tiles)


def test_filter_settings_are_typed_and_checked():
    cfg = filtering.FilterSettings.from_params({"tolerance": 2.0, "hard_classes": ["water"]})
    assert cfg.tolerance == 2.0 and cfg.hard_classes == ["water"] and cfg.min_kept_fraction == 0.8
    with pytest.raises(filtering.FilterError, match="tolerence: did you mean tolerance"):
        filtering.FilterSettings.from_params({"tolerence": 2.0})
    with pytest.raises(filtering.FilterError, match="min_kept_fraction in"):
        filtering.FilterSettings.from_params({"min_kept_fraction": 1.5})
