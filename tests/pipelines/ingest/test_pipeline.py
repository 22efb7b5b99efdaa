"""The ``ingest`` pipeline's contract: raw data and a target domain in; tiles, the manifest, the class
registry and the checks out."""

from __future__ import annotations

from tests.pipelines.contract import check_contract


def test_ingest_reads_and_writes_what_it_declares():
    check_contract(
        "ingest",
        inputs=[
            "params:dataset", "params:demo_scenes", "params:ingest", "params:target", "target_raw_dataset",
        ],
        outputs=[
            "class_registry", "class_statistics", "class_statistics_plot", "ingest_metrics", "ingest_problems",
            "raw_dataset", "target_manifest", "target_problems", "target_tiles", "tile_manifest", "tile_plan",
            "tiles", "tisynth_jsonl",
        ],
        nodes=[
            "prepare_raw_dataset", "build_class_registry", "ingest_target", "plan_tiles", "write_tiles",
            "export_tisynth_jsonl", "summarise_classes",
        ],
    )
