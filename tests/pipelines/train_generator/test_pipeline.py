"""The ``train_generator`` pipeline's contract: the stages base, A, B in order, each saved, with the
latent cache and the training report."""

from __future__ import annotations

from tests.pipelines.contract import check_contract


def test_train_generator_reads_and_writes_what_it_declares():
    check_contract(
        "train_generator",
        inputs=[
            "class_registry", "params:generator", "params:ref_augment", "params:train_generator", "target_manifest",
            "target_tiles", "tile_manifest", "tiles",
        ],
        outputs=[
            "generator", "generator_base", "generator_history", "generator_history_a", "generator_history_b",
            "generator_history_base", "generator_init", "generator_latent_cache", "generator_loss_plot",
            "generator_mask_use", "generator_samples", "generator_stage_a",
        ],
        nodes=[
            "init_generator", "cache_latents", "train_generator_base", "train_generator_stage_a",
            "train_generator_stage_b", "report_generator_training",
        ],
    )
