"""Ref augmentation: determinism, exact identity where nothing is drawn, statistics, geometry."""

from __future__ import annotations

import math

import pytest
import torch

from tisynth.generator.augment import AugmentError, RefAugment, _mirror_shift


def _smooth_images(b: int = 16, size: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, 6, 6, generator=g) * 2 - 1
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (img + 0.1 * torch.rand(b, 3, size, size, generator=g)).clamp(-1, 1)


def test_deterministic_under_a_seed_and_varies_with_it():
    x = _smooth_images()
    aug = RefAugment(p=0.5)
    a = aug(x, generator=torch.Generator().manual_seed(3))
    b = aug(x, generator=torch.Generator().manual_seed(3))
    c = aug(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_p_zero_is_the_identity_and_undrawn_images_stay_exact():
    x = _smooth_images()
    assert torch.equal(RefAugment(p=0.0)(x, generator=torch.Generator().manual_seed(0)), x)
    aug = RefAugment(p=0.3)
    draws = aug.draw(len(x), x.shape[3], x.shape[2], torch.Generator().manual_seed(1))
    y = aug(x, generator=torch.Generator().manual_seed(1))
    touched = draws["int_apply"] | draws["scale_apply"] | draws["rot_apply"] | draws["frac_apply"]
    assert 0 < int(touched.sum()) < len(x)  # some drawn, some not (seeded)
    for i in range(len(x)):
        same = torch.equal(y[i], x[i])
        assert same == (not bool(touched[i])), i


def test_image_statistics_are_kept():
    x = _smooth_images(b=32, size=64)
    y = RefAugment(p=1.0)(x, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(x, y)
    for i in range(len(x)):  # per image: reflection padding keeps content, mild low-pass keeps std
        assert abs(y[i].mean() - x[i].mean()) < 0.1
        assert 0.8 < y[i].std() / x[i].std() < 1.2
    assert abs(y.mean() - x.mean()) < 0.02 and abs(y.std() / x.std() - 1) < 0.05


def test_integer_translation_follows_the_mirror_formula():
    w = h = 10
    x = torch.arange(w * h, dtype=torch.float32).view(1, 1, h, w)
    shifts = torch.tensor([[3, -2]])
    y = _mirror_shift(x, shifts)
    for yy in range(h):
        for xx in range(w):
            sx = (w - 1) - abs((w - 1) - ((xx - 3) % (2 * w - 2)))
            sy = (h - 1) - abs((h - 1) - ((yy + 2) % (2 * h - 2)))
            assert y[0, 0, yy, xx] == x[0, 0, sy, sx]


def test_rotation_only_rotates_about_the_centre():
    # a pure rotation by +θ: the centre pixel of a smooth image stays, content moves
    x = _smooth_images(b=1, size=64)
    aug = RefAugment(p=1.0, integer_translation=0, scale=0, fractional_translation=0)
    d = aug.draw(1, 64, 64, torch.Generator().manual_seed(0))
    assert d["rot_apply"].all() and abs(float(d["theta"][0])) <= math.pi * 0.1
    y = aug(x, generator=torch.Generator().manual_seed(0))
    c = 32
    assert torch.allclose(y[0, :, c - 1 : c + 1, c - 1 : c + 1].mean((1, 2)), x[0, :, c - 1 : c + 1, c - 1 : c + 1].mean((1, 2)), atol=0.05)


def test_invalid_parameters():
    with pytest.raises(AugmentError):
        RefAugment(p=1.5)
    with pytest.raises(AugmentError):
        RefAugment(scale_std=-1)
    with pytest.raises(AugmentError):
        RefAugment()(torch.zeros(3, 8, 8))
