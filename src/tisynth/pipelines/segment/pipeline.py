"""The ``segment`` pipeline.

real train tiles (+ kept filtered synthetic pairs) → baseline (real only) and augmented (real +
synthetic) segmenters with the same settings, seed and iteration budget (``equal_budget``) or the
paper's protocol (``paper``), selected on val → evaluated once on every evaluation set (``test``)
→ comparison table, per-class IoU chart, confusion matrices, prediction examples; one nested
MLflow run per trained segmenter.
"""

from kedro.pipeline import Node, Pipeline

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(nodes.prepare_segment_data,
                 ["tiles", "tile_manifest", "synthetic_images", "filtered_synthetic", "filtered_manifest",
                  "target_tiles", "target_manifest", "params:segment"],
                 "segment_data", name="prepare_segment_data"),
            Node(nodes.train_and_evaluate_segmenters,
                 ["segment_data", "class_registry", "params:segmenter", "params:segmenter_work_root", "params:segment"],
                 ["baseline_segmenter", "augmented_segmenter", "segment_results", "segment_confusions",
                  "segment_training"],
                 name="train_and_evaluate_segmenters"),
            Node(nodes.build_segment_report,
                 ["segment_results", "segment_confusions", "segment_training", "class_registry", "params:segment"],
                 ["segment_comparison", "segment_comparison_md", "segment_per_class_iou",
                  "segment_confusion_matrices", "segment_metrics"],
                 name="build_segment_report"),
            Node(nodes.plot_segment_predictions,
                 ["baseline_segmenter", "augmented_segmenter", "segment_data", "class_registry", "params:segment"],
                 "segment_examples", name="plot_segment_predictions"),
        ],
        namespace="segment",  # one group in kedro-viz; dataset names stay global
        prefix_datasets_with_namespace=False,
    )
