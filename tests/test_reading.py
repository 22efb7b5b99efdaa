"""The segmenter's reading of generated images: the scores and the run over guidance scales."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tisynth.classes import IGNORE_INDEX
from tisynth.generator import reading
from tisynth.io import DataError, TileSet, write_image


def test_scores_tell_recognition_and_layout_apart():
    one = np.zeros((8, 8), np.uint8)  # a one-class tile
    two = np.zeros((8, 8), np.uint8)
    two[:, 4:] = 1  # a two-class tile
    # right class everywhere on the one-class tile; on the two-class tile the layout is lost
    preds = [np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)]
    r = reading.mask_following(preds, [one, two], 2)
    assert r["dominant_acc"] == 1.0  # both tiles' main class (ties go to the first class) recognised
    assert r["multi_tiles"] == 1
    assert r["multi_mIoU"] == pytest.approx((32 / 64 + 0) / 2)  # class 0: 32/64, class 1 never predicted
    assert r["OA"] == pytest.approx(96 / 128)
    perfect = reading.mask_following([one, two], [one, two], 2)
    assert perfect["mIoU"] == 1.0 and perfect["multi_mIoU"] == 1.0
    wrong = reading.mask_following([np.ones((8, 8), np.uint8)], [one], 2)
    assert wrong["dominant_acc"] == 0.0 and math.isnan(wrong["multi_mIoU"])


def test_ignored_pixels_do_not_count():
    mask = np.full((4, 4), IGNORE_INDEX, np.uint8)
    mask[0, 0] = 1
    r = reading.mask_following([np.ones((4, 4), np.uint8)], [mask], 2)
    assert r["OA"] == 1.0 and r["dominant_acc"] == 1.0


def test_bad_inputs_are_refused():
    with pytest.raises(DataError, match="one prediction per mask"):
        reading.mask_following([], [], 2)
    with pytest.raises(DataError, match="differ in size"):
        reading.mask_following([np.zeros((2, 2), np.uint8)], [np.zeros((3, 3), np.uint8)], 2)
    with pytest.raises(DataError, match="unknown reading key"):
        reading.ReadingSettings.from_params({"tile": 3})
    with pytest.raises(DataError, match="refs"):
        reading.ReadingSettings.from_params({"refs": "nearest"})


class _Oracle:
    """A 'segmenter' that reads class 1 where the image is bright, else class 0."""

    def predict(self, image):
        return [(image.mean(axis=2) > 127).astype(np.uint8)]


class _Painter:
    """A 'generator' that paints each mask: class 1 white, class 0 black (perfect mask following)."""

    num_classes = 2


def test_read_generator_rows_per_guidance(tmp_path, monkeypatch):
    rows = []
    rng = np.random.default_rng(0)
    for i in range(6):
        mask = (rng.random((8, 8)) > 0.5).astype(np.uint8)
        write_image(tmp_path / "images" / f"t{i}.png", np.repeat(mask[..., None] * 255, 3, axis=2).astype(np.uint8))
        write_image(tmp_path / "masks" / f"t{i}.png", mask)
        rows.append({"name": f"t{i}", "split": "val" if i < 3 else "train", "image": f"images/t{i}.png",
                     "mask": f"masks/t{i}.png", "prompt": "p", "group": "g"})
    manifest = pd.DataFrame(rows)
    seen = []

    def fake_sample(model, masks, refs, prompts, seeds, cfg):
        seen.append((cfg["guidance_scale"], None if refs is None else len(refs)))
        return np.repeat(masks[..., None] * 255, 3, axis=3).astype(np.uint8)

    monkeypatch.setattr("tisynth.generator.sample.sample_images", fake_sample)
    cfg = reading.ReadingSettings.from_params({"tiles": 3, "stride": 1, "guidance": [1, 2]}, {"steps": 2})
    table = reading.read_generator(_Painter(), _Oracle(), TileSet(tmp_path), manifest, cfg)
    assert list(table["mode"]) == ["tisynth", "tisynth", "real"]
    assert seen == [(1.0, 3), (2.0, 3)]
    assert np.allclose(table["mIoU"], 1.0)
    refs = reading.choose_refs(manifest, manifest[manifest["split"] == "val"], cfg)
    assert all(r.startswith("images/t") and int(r[8]) >= 3 for r in refs)  # Refs from the train split only
