"""The filter and segment pipelines run end to end through Kedro on tiny generated data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure

from tisynth.datasets import FileTreeDataset, ModelDirectoryDataset
from tisynth.io import TileSet
from tisynth.pipelines.filter import create_pipeline as filter_pipeline
from tisynth.pipelines.segment import create_pipeline as segment_pipeline
from tisynth.segmentation.segmenter import Segmenter

from .toydata import synthetic_set, tiny_config

MODEL = "tisynth.segmentation.segmenter.Segmenter"


class Kept(MemoryDataset):
    """A memory dataset the runner cannot release, so the test can look at it afterwards."""

    def _release(self) -> None:
        pass


@pytest.mark.slow
def test_filter_then_segment(tmp_path, toy_tiles, registry):
    tiles, manifest = toy_tiles
    syn, syn_manifest = synthetic_set(tmp_path / "syn", tiles, manifest, n_good=5, n_bad=2)
    work = str(tmp_path / "work")
    seg_cfg = tiny_config()
    params_filter = {"tolerance": 1.25, "min_kept_fraction": 0.8, "hard_classes": "auto",
                     "auto_hard_k": 1, "examples": 3}
    params_segment = {"eval_sets": {"test": "test"}, "seeds": [0],
                      "mix": {"mode": "equal_budget", "real_fraction": 0.5}, "examples": 2}
    catalog = DataCatalog({
        "tiles": MemoryDataset(tiles, copy_mode="assign"),
        "tile_manifest": MemoryDataset(manifest),
        "class_registry": MemoryDataset(registry, copy_mode="assign"),
        "synthetic_images": MemoryDataset(syn, copy_mode="assign"),
        "synthetic_manifest": MemoryDataset(syn_manifest),
        "params:filter": MemoryDataset(params_filter),
        "params:segment": MemoryDataset(params_segment),
        "params:segmenter": MemoryDataset(seg_cfg),
        "params:segmenter_work_root": MemoryDataset(work),
        "target_tiles": MemoryDataset(TileSet(tmp_path / "no_target"), copy_mode="assign"),  # no target domain
        "target_manifest": MemoryDataset(pd.DataFrame(columns=list(manifest.columns))),
        "real_segmenter": ModelDirectoryDataset(str(tmp_path / "models/real"), MODEL),
        "baseline_segmenter": ModelDirectoryDataset(str(tmp_path / "models/baseline"), MODEL),
        "augmented_segmenter": ModelDirectoryDataset(str(tmp_path / "models/augmented"), MODEL),
        "filtered_synthetic": FileTreeDataset(str(tmp_path / "filtered"), mode="incremental"),
    })
    for name in ("filtered_manifest", "filter_statistics", "filter_metrics", "filter_examples", "class_losses",
                 "hard_classes", "real_segmenter_val_metrics", "segment_results", "segment_confusions",
                 "segment_training", "segment_comparison", "segment_comparison_md", "segment_per_class_iou",
                 "segment_confusion_matrices", "segment_examples", "segment_metrics"):
        catalog[name] = Kept(copy_mode="assign")
    SequentialRunner().run(filter_pipeline() + segment_pipeline(), catalog)

    # filter outputs
    assert isinstance(catalog.load("real_segmenter"), Segmenter)
    fm = catalog.load("filtered_manifest")
    assert len(fm) == 7 and {"filtered_mask", "kept", "kept_fraction", "has_hard_class"} <= set(fm.columns)
    assert all((tmp_path / "filtered" / p).is_file() for p in fm["filtered_mask"])
    assert fm["kept"].any(), "no synthetic pair kept: the augmented run would have nothing to add"
    assert len(catalog.load("hard_classes")) == 1
    assert isinstance(catalog.load("filter_examples"), Figure)
    assert "kept_pairs" in catalog.load("filter_metrics")

    # segment outputs: both variants, evaluated on test
    results = catalog.load("segment_results")
    assert set(results["variant"]) == {"baseline", "augmented"}
    assert set(results["eval_set"]) == {"test"}
    summary = results[results["metric"] == "mIoU"].set_index("variant")["value"]
    assert (summary > 0.4).all(), summary
    training = catalog.load("segment_training").set_index("variant")
    assert training.loc["baseline", "iterations"] == training.loc["augmented", "iterations"]  # equal budget
    assert training.loc["augmented", "n_train_synthetic"] == int(fm["kept"].sum())
    # the baseline is the filter's real-only job (same settings and seed): trained once, reused
    assert training.loc["baseline", "work_dir"] == catalog.load("real_segmenter").training_info["work_dir"]
    table = catalog.load("segment_comparison")
    assert {"baseline_mean", "augmented_mean", "delta_mean"} <= set(table.columns)
    row = table[(table["eval_set"] == "test") & (table["metric"] == "mIoU")].iloc[0]
    assert np.isclose(row["delta_mean"], summary["augmented"] - summary["baseline"])
    md = catalog.load("segment_comparison_md")
    assert "| mIoU |" in md and "vegetation" in md
    for fig in ("segment_per_class_iou", "segment_confusion_matrices", "segment_examples"):
        assert isinstance(catalog.load(fig), Figure)
    metrics = catalog.load("segment_metrics")
    assert metrics["test.baseline.mIoU"]["value"] == summary["baseline"]
    confusions = catalog.load("segment_confusions")
    test_pixels = sum(int((tiles.read_mask(m) != 255).sum()) for m in manifest[manifest["split"] == "test"]["mask"])
    assert confusions[confusions["variant"] == "baseline"]["pixels"].sum() == test_pixels
    val_metrics = catalog.load("real_segmenter_val_metrics")  # one row per class, the hard ones marked
    assert list(val_metrics["class"]) == registry.names
    assert val_metrics["IoU"].between(0, 1).all() and val_metrics["hard"].dtype == bool
    assert set(val_metrics.loc[val_metrics["hard"], "class"]) == set(catalog.load("hard_classes"))
