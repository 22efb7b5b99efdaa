"""The ``references`` pipeline."""

from kedro.pipeline import Node, Pipeline

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(nodes.build_ref_pool, ["tile_manifest", "target_manifest", "params:references"], "ref_pool", name="build_ref_pool"),
            Node(nodes.plan_synthesis, ["tile_manifest", "ref_pool", "params:references"], "synthesis_plan",
                 name="plan_synthesis"),
            Node(nodes.preview_ref_augmentation, ["tiles", "tile_manifest", "params:ref_augment", "params:references"],
                 "ref_augmentation_preview", name="preview_ref_augmentation"),
        ],
        namespace="references",  # one group in kedro-viz; dataset names stay global
        prefix_datasets_with_namespace=False,
    )
