"""The ``read_generator`` pipeline's contract: the real-only segmenter's reading of images sampled for val masks."""

from __future__ import annotations

from tests.pipelines.contract import check_contract


def test_read_generator_reads_and_writes_what_it_declares():
    check_contract(
        "read_generator",
        inputs=[
            "generator", "params:read_generator", "params:sample", "real_segmenter", "tile_manifest", "tiles",
        ],
        outputs=[
            "generator_reading", "generator_reading_metrics",
        ],
        nodes=[
            "read_generator_images",
        ],
    )
