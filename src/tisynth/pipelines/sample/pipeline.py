"""The ``sample`` pipeline."""

from kedro.pipeline import Node, Pipeline

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(nodes.sample_synthetic_images, ["generator", "tiles", "target_tiles", "synthesis_plan", "params:sample"],
                 "synthetic_images", name="sample_synthetic_images"),
            Node(nodes.index_synthetic_images, ["synthetic_images", "synthesis_plan", "params:sample"],
                 ["synthetic_manifest", "sample_metrics"], name="index_synthetic_images"),
            Node(nodes.synthetic_grid,
                 ["synthetic_images", "tiles", "target_tiles", "synthetic_manifest", "class_registry", "params:sample"],
                 "synthetic_grid", name="synthetic_grid"),
            Node(nodes.synthetic_image_quality,
                 ["synthetic_images", "synthetic_manifest", "tiles", "tile_manifest", "params:sample"],
                 "synthetic_quality", name="synthetic_image_quality"),
        ],
        namespace="sample",  # one group in kedro-viz; dataset names stay global
        prefix_datasets_with_namespace=False,
    )
