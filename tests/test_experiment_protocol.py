"""benchmarks/experiment.py: a segmenter protocol for the compared segmenters only."""

from __future__ import annotations

import numpy as np
import pandas as pd
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


def _results(values: dict[str, list[float]], eval_set: str = "target test") -> pd.DataFrame:
    rows = []
    for variant, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            for metric in ("OA", "mIoU", "mAcc"):
                rows.append({"variant": variant, "seed": seed, "eval_set": eval_set, "metric": metric,
                             "class": None, "value": v})
    return pd.DataFrame(rows)


def test_the_report_compares_tisynth_head_to_head_with_paired_seeds():
    exp = load_experiment()
    results = _results({"real": [0.60, 0.62, 0.58, 0.61], "tisynth": [0.66, 0.65, 0.64, 0.70],
                        "fda": [0.64, 0.66, 0.60, 0.66], "histmatch": [0.63, 0.63]})
    duels = exp.head_to_head(results)
    by = duels[duels["metric"] == "mIoU"].set_index("baseline")
    assert set(by.index) == {"fda", "histmatch"}   # maskonly and tisynth_fda were not run
    diff = np.array([0.66, 0.65, 0.64, 0.70]) - np.array([0.64, 0.66, 0.60, 0.66])
    assert by.loc["fda", "gain"] == pytest.approx(diff.mean())
    assert by.loc["fda", "ci_low"] < diff.mean() < by.loc["fda", "ci_high"]
    assert by.loc["fda", "per_seed"] == " ".join(f"{100 * d:+.2f}" for d in diff)
    assert by.loc["histmatch", "paired_seeds"] == 2   # only the seeds both have
    text = exp.summary_markdown(results, exp.gains_table(results), [], duels)
    assert "| (b) − (e) fda | 4 | +2.25 [" in text


def test_the_combined_variant_takes_both_sets_of_pairs(tmp_path):
    exp = load_experiment()
    assert exp.COMBINED["tisynth_fda"] == ("tisynth", "fda")
    assert "tisynth_fda" in exp.VARIANTS and exp.VARIANTS["tisynth_fda"].startswith("(g)")
    args = exp.build_parser().parse_args(["--data", "d", "--workspace", str(tmp_path), "--variants", "real", "tisynth_fda"])
    assert exp.needed_variants(args.variants) == ["real", "tisynth_fda", "tisynth", "fda"]
    sets = {"tisynth": ["t1", "t2"], "fda": ["f1"]}
    exp.add_combined(sets, ["fda"])
    assert "tisynth_fda" not in sets                     # not asked for
    exp.add_combined(sets, args.variants)
    assert sets["tisynth_fda"] == ["t1", "t2", "f1"]
    partial = {"tisynth": ["t1"]}
    exp.add_combined(partial, args.variants)
    assert "tisynth_fda" not in partial                  # FDA not made yet: nothing to combine
