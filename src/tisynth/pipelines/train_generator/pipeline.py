"""The ``train_generator`` pipeline."""

from kedro.pipeline import Node, Pipeline

from . import nodes

_COMMON = ["generator_latent_cache", "tiles", "tile_manifest", "params:train_generator", "params:ref_augment", "params:generator"]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(nodes.init_generator, ["class_registry", "params:generator", "params:train_generator"],
                 "generator_init", name="init_generator"),
            Node(nodes.cache_latents, ["generator_init", "tiles", "tile_manifest", "target_tiles", "target_manifest",
                                       "params:train_generator"],
                 "generator_latent_cache", name="cache_latents"),
            Node(nodes.train_generator_base, ["generator_init", *_COMMON], ["generator_base", "generator_history_base"],
                 name="train_generator_base"),
            Node(nodes.train_generator_stage_a, ["generator_base", *_COMMON], ["generator_stage_a", "generator_history_a"],
                 name="train_generator_stage_a"),
            Node(nodes.train_generator_stage_b, ["generator_stage_a", *_COMMON], ["generator", "generator_history_b"],
                 name="train_generator_stage_b"),
            Node(nodes.report_generator_training,
                 ["generator_history_base", "generator_history_a", "generator_history_b", "generator", "tiles",
                  "tile_manifest", "params:train_generator"],
                 ["generator_history", "generator_loss_plot", "generator_samples", "generator_mask_use"], name="report_generator_training"),
        ],
        namespace="train_generator",  # one group in kedro-viz; dataset names stay global
        prefix_datasets_with_namespace=False,
    )
