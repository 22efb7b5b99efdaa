"""The mask-use check: zero for a model that cannot see its masks, clearly positive once stage A
has learnt them, and clear errors for batches it cannot use."""

from __future__ import annotations

import numpy as np
import pytest

from tisynth.generator import build_generator, collate_items, train_generator
from tisynth.generator.diagnostics import DiagnosticsError, mask_use

from .conftest import PAPER_PATH, make_tiles


def _one_prompt(tiles):
    """The check swaps mask and prompt together; with one prompt for all, only the mask differs."""
    return [{**t, "prompt": tiles[0]["prompt"]} for t in tiles]


def test_a_fresh_model_ignores_masks_exactly(tiny, tiles):
    # zero output convs: the mask cannot change the prediction yet, in either mode
    batch = collate_items(_one_prompt(tiles[:4]))
    for mode in ("tisynth", "controlnet"):
        rows = mask_use(tiny, batch, timesteps=(500, 950), mode=mode)
        assert [r["t"] for r in rows] == [500.0, 950.0]
        for r in rows:
            assert r["loss_true_mask"] == pytest.approx(r["loss_other_mask"], rel=1e-6)
            assert abs(r["mask_gain"]) < 1e-5


def test_stage_a_training_makes_the_mask_lower_the_loss(registry, tmp_path):
    tiles = _one_prompt(make_tiles(registry, n=8, size=32, seed=3))
    model = build_generator({"preset": "tiny", "image_size": 32, **PAPER_PATH}, registry)
    batch = collate_items(tiles)
    before = mask_use(model, batch, timesteps=(950,), mode="controlnet")[0]
    cfg = {"stage": "A", "steps": 120, "learning_rate": 3e-3, "batch_size": 8, "progress": False,
           "checkpoint_every": 0, "hflip": 0.0, "timesteps": [900, 950, 999], "train_unet_decoder": True}
    train_generator(model, tiles, cfg, tmp_path)
    after = mask_use(model, batch, timesteps=(950,), mode="controlnet")[0]
    assert abs(before["mask_gain"]) < 1e-5
    assert after["mask_gain"] > 0.1, after  # the true mask explains the image far better than another's
    assert after["loss_true_mask"] < before["loss_true_mask"]


def test_unusable_batches_are_refused(tiny, tiles):
    with pytest.raises(DiagnosticsError, match="at least two"):
        mask_use(tiny, collate_items(tiles[:1]))
    same = [dict(tiles[0]), dict(tiles[0])]
    with pytest.raises(DiagnosticsError, match="same mask"):
        mask_use(tiny, collate_items(same))
    with pytest.raises(DiagnosticsError, match="outside"):
        mask_use(tiny, collate_items(tiles[:2]), timesteps=(1000,))
    with pytest.raises(DiagnosticsError, match="mode"):
        mask_use(tiny, collate_items(tiles[:2]), mode="other")
    with pytest.raises(DiagnosticsError, match="mask-first"):
        mask_use(tiny, collate_items(tiles[:2]), mode="base")
    assert np.isfinite(mask_use(tiny, collate_items(tiles[:2]), timesteps=(0,))[0]["mask_gain"])


def test_a_mask_first_base_is_checked_with_mask_and_prompt_swapped(mask_first_tiny, tiles):
    """A mask-first base sees the mask from step 0, so a fresh one already reacts to it; the
    check swaps mask and prompt together (the prompt names the tile's classes)."""
    batch = collate_items(tiles[:4])
    rows = mask_use(mask_first_tiny, batch, timesteps=(950,), mode="base")
    assert rows[0]["loss_true_mask"] != rows[0]["loss_other_mask"]
