"""The ``references`` pipeline's contract: the Ref pool and the synthesis plan, from the source tiles
and (when given) the target's."""

from __future__ import annotations

from tests.pipelines.contract import check_contract


def test_references_reads_and_writes_what_it_declares():
    check_contract(
        "references",
        inputs=[
            "params:ref_augment", "params:references", "target_manifest", "tile_manifest", "tiles",
        ],
        outputs=[
            "ref_augmentation_preview", "ref_pool", "synthesis_plan",
        ],
        nodes=[
            "build_ref_pool", "preview_ref_augmentation", "plan_synthesis",
        ],
    )
