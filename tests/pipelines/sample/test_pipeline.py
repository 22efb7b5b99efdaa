"""The ``sample`` pipeline's contract: the synthetic images of the plan, their manifest, a grid and FID/KID."""

from __future__ import annotations

from tests.pipelines.contract import check_contract


def test_sample_reads_and_writes_what_it_declares():
    check_contract(
        "sample",
        inputs=[
            "class_registry", "generator", "params:sample", "synthesis_plan", "target_tiles", "tile_manifest",
            "tiles",
        ],
        outputs=[
            "sample_metrics", "synthetic_grid", "synthetic_images", "synthetic_manifest", "synthetic_quality",
        ],
        nodes=[
            "sample_synthetic_images", "index_synthetic_images", "synthetic_grid", "synthetic_image_quality",
        ],
    )
