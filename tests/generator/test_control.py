"""Control encodings of index-space masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tisynth.classes import IGNORE_INDEX
from tisynth.generator.control import ControlError, control_channels, encode_control


def test_onehot_has_one_channel_per_registry_class_and_zero_for_ignore(registry):
    k = registry.num_classes
    mask = np.array([[0, 1], [k - 1, IGNORE_INDEX]], np.uint8)
    out = encode_control(mask, k)
    assert out.shape == (1, k, 2, 2) and out.dtype == torch.float32
    assert control_channels(k, "onehot") == k
    assert out[0, :, 0, 0].tolist() == [1.0] + [0.0] * (k - 1)
    assert out[0, 1, 0, 1] == 1 and out[0, k - 1, 1, 0] == 1
    assert out[0, :, 1, 1].sum() == 0  # ignore -> all zeros
    assert torch.equal(out.sum(1)[0], torch.tensor([[1.0, 1.0], [1.0, 0.0]]))


def test_authors_encoding_is_index_over_255_three_times(registry):
    mask = torch.tensor([[[0, 3], [4, IGNORE_INDEX]]], dtype=torch.uint8)
    out = encode_control(mask, registry.num_classes, "authors")
    assert out.shape == (1, 3, 2, 2)
    expected = torch.tensor([[0.0, 3 / 255], [4 / 255, 1.0]])
    for c in range(3):
        assert torch.allclose(out[0, c], expected)


def test_bad_masks_are_named(registry):
    k = registry.num_classes
    with pytest.raises(ControlError, match=r"mask value\(s\) \[7\]"):
        encode_control(np.array([[0, 7]], np.uint8), k)
    with pytest.raises(ControlError, match="integer dtype"):
        encode_control(np.zeros((1, 2, 2), np.float32), k)
    with pytest.raises(ControlError, match="B×H×W"):
        encode_control(np.zeros((1, 1, 2, 2), np.uint8), k)
    with pytest.raises(ControlError, match="encoding"):
        encode_control(np.zeros((2, 2), np.uint8), k, "palette")
