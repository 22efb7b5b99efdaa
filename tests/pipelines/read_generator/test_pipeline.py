"""The ``read_generator`` pipeline's contract: the real-only segmenter's reading of images sampled for val masks,
and the Ref-steering report."""

from __future__ import annotations

from tests.pipelines.contract import check_contract


def test_read_generator_reads_and_writes_what_it_declares():
    check_contract(
        "read_generator",
        inputs=[
            "generator", "params:read_generator", "params:ref_steering", "params:sample", "real_segmenter",
            "target_manifest", "target_tiles", "tile_manifest", "tiles",
        ],
        outputs=[
            "generator_reading", "generator_reading_metrics", "ref_steering", "ref_steering_figure", "ref_steering_metrics",
        ],
        nodes=[
            "read_generator_images", "report_ref_steering",
        ],
    )
