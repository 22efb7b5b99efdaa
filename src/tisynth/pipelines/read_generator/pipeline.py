"""The ``read_generator`` pipeline: does the generator follow its masks? The real-only
segmenter of ``filter`` reads images sampled for held-out masks (:mod:`tisynth.generator.reading`).
Does the Ref steer the look? Source-Ref and target-Ref samples of the same masks and seeds
(:mod:`tisynth.generator.steering`)."""

from kedro.pipeline import Node, Pipeline

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(nodes.read_generator_images,
                 ["real_segmenter", "generator", "tiles", "tile_manifest", "params:read_generator", "params:sample"],
                 ["generator_reading", "generator_reading_metrics"], name="read_generator_images"),
            Node(nodes.report_ref_steering,
                 ["generator", "tiles", "tile_manifest", "target_tiles", "target_manifest", "params:ref_steering",
                  "params:sample"],
                 ["ref_steering", "ref_steering_metrics", "ref_steering_figure"], name="report_ref_steering"),
        ],
        namespace="read_generator",  # one group in kedro-viz; dataset names stay global
        prefix_datasets_with_namespace=False,
    )
