"""benchmarks/experiment.py: a segmenter protocol for the compared segmenters only."""

from __future__ import annotations

import pytest

from tests.test_restyle import load_experiment


def test_segmenter_protocol_nests_dotted_keys_below_segmenter():
    ex = load_experiment()
    out = ex.segmenter_protocol(["data.style_augment=0.5", "train.iterations=600", "data.style_family={gamma: [0.8, 1.2]}"])
    assert out == {"data": {"style_augment": 0.5, "style_family": {"gamma": [0.8, 1.2]}}, "train": {"iterations": 600}}
    assert ex.segmenter_protocol([]) == {}


@pytest.mark.parametrize("item, match", [
    ("data.style_augment", "expected dotted.key=value"),
    ("data.style_augment=2", r"segmenter\.data\.style_augment"),
    ("data.tint=1", r"segmenter\.data: unknown key"),
])
def test_a_bad_protocol_stops_the_command_naming_the_key(item, match):
    ex = load_experiment()
    with pytest.raises(SystemExit, match=match):
        ex.segmenter_protocol([item])
