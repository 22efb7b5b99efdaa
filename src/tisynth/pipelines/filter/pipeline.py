"""The ``filter`` pipeline (METHOD §4).

real tiles → real-only segmenter (train split, selected on val) → class-wise mean losses on the
train tiles → FreeMask filtering of every synthetic mask → resampling (hard class present or
> 80 % of the pixels kept) → filtered manifest, statistics, example figure.
"""

from kedro.pipeline import Node, Pipeline

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(nodes.train_real_segmenter, ["tiles", "tile_manifest", "class_registry", "params:segmenter",
                                              "params:segmenter_work_root", "params:filter"],
                 "real_segmenter", name="train_real_segmenter"),
            Node(nodes.compute_class_losses, ["real_segmenter", "tiles", "tile_manifest", "params:filter"],
                 "class_losses", name="compute_class_losses"),
            Node(nodes.select_hard_classes,
                 ["real_segmenter", "tiles", "tile_manifest", "class_registry", "params:filter"],
                 ["real_segmenter_val_metrics", "hard_classes"], name="select_hard_classes"),
            Node(nodes.filter_synthetic_masks,
                 ["real_segmenter", "synthetic_images", "synthetic_manifest", "tiles", "class_losses",
                  "params:filter"],
                 "filtered_synthetic", name="filter_synthetic_masks"),
            Node(nodes.resample_synthetic,
                 ["filtered_synthetic", "synthetic_images", "synthetic_manifest", "tiles", "class_registry",
                  "hard_classes", "params:filter"],
                 ["filtered_manifest", "filter_statistics", "filter_metrics"], name="resample_synthetic"),
            Node(nodes.plot_filter_examples,
                 ["filtered_manifest", "synthetic_images", "filtered_synthetic", "tiles", "class_registry",
                  "params:filter"],
                 "filter_examples", name="plot_filter_examples"),

        ],
        namespace="filter",  # one group in kedro-viz; dataset names stay global
        prefix_datasets_with_namespace=False,
    )
