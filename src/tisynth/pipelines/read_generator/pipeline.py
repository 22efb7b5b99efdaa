"""The ``read_generator`` pipeline: does the generator follow its masks? The real-only
segmenter of ``filter`` reads images sampled for held-out masks (:mod:`tisynth.generator.reading`)."""

from kedro.pipeline import Node, Pipeline

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(nodes.read_generator_images,
                 ["real_segmenter", "generator", "tiles", "tile_manifest", "params:read_generator", "params:sample"],
                 ["generator_reading", "generator_reading_metrics"], name="read_generator_images"),
        ],
        namespace="read_generator",  # one group in kedro-viz; dataset names stay global
        prefix_datasets_with_namespace=False,
    )
