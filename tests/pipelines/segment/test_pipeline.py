"""The ``segment`` pipeline's contract: real-only vs real + filtered synthetic segmenters, evaluated
once each, and the report."""

from __future__ import annotations

from tests.pipelines.contract import check_contract


def test_segment_reads_and_writes_what_it_declares():
    check_contract(
        "segment",
        inputs=[
            "class_registry", "filtered_manifest", "filtered_synthetic", "params:segment", "params:segmenter",
            "params:segmenter_work_root", "synthetic_images", "target_manifest", "target_tiles", "tile_manifest",
            "tiles",
        ],
        outputs=[
            "augmented_segmenter", "baseline_segmenter", "segment_comparison", "segment_comparison_md",
            "segment_confusion_matrices", "segment_confusions", "segment_data", "segment_examples",
            "segment_metrics", "segment_per_class_iou", "segment_results", "segment_training",
        ],
        nodes=[
            "prepare_segment_data", "train_and_evaluate_segmenters", "build_segment_report",
            "plot_segment_predictions",
        ],
    )
