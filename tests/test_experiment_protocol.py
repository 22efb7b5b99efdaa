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
    ("data.style_augment=abc", r"segmenter\.data\.style_augment: a probability"),
])
def test_a_bad_protocol_stops_the_command_naming_the_key(item, match):
    ex = load_experiment()
    with pytest.raises(SystemExit, match=match):
        ex.segmenter_protocol([item])


def test_the_protocol_is_checked_merged_into_the_runs_own_segmenter_block():
    ex = load_experiment()
    # a folder-style block has both keys of backbone_lr_mult: overriding one of them is fine there
    base = {"model": {"type": "efficientnet_lite"}, "optimizer": {"backbone_lr_mult": {"pretrained": 0.1, "scratch": 1.0}}}
    assert ex.segmenter_protocol(["optimizer.backbone_lr_mult.pretrained=0.2"], base) == {
        "optimizer": {"backbone_lr_mult": {"pretrained": 0.2}}}
    with pytest.raises(SystemExit, match="backbone_lr_mult"):
        ex.segmenter_protocol(["optimizer.backbone_lr_mult={pretrained: 0.2}"])  # alone it lacks `scratch`
