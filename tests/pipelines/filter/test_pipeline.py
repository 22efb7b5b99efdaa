"""The ``filter`` pipeline's contract: the real-only segmenter (shared segmenter block and work
root), the FreeMask filter and the kept set."""

from __future__ import annotations

from tests.pipelines.contract import check_contract


def test_filter_reads_and_writes_what_it_declares():
    check_contract(
        "filter",
        inputs=[
            "class_registry", "params:filter", "params:segmenter", "params:segmenter_work_root",
            "synthetic_images", "synthetic_manifest", "tile_manifest", "tiles",
        ],
        outputs=[
            "class_losses", "filter_examples", "filter_metrics", "filter_statistics", "filtered_manifest",
            "filtered_synthetic", "hard_classes", "real_segmenter", "real_segmenter_val_metrics",
        ],
        nodes=[
            "train_real_segmenter", "compute_class_losses", "select_hard_classes", "filter_synthetic_masks",
            "resample_synthetic", "plot_filter_examples",
        ],
    )
