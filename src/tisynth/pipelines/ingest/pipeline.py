"""The ``ingest`` pipeline."""

from kedro.pipeline import Node, Pipeline

from . import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(nodes.prepare_raw_dataset, ["params:dataset", "params:demo_scenes"], "raw_dataset",
                 name="prepare_raw_dataset"),
            Node(nodes.build_class_registry, ["raw_dataset", "params:dataset"], "class_registry",
                 name="build_class_registry"),
            Node(nodes.plan_tiles, ["raw_dataset", "class_registry", "params:dataset", "params:ingest"],
                 ["tile_plan", "ingest_problems"], name="plan_tiles"),
            Node(nodes.write_tiles, ["raw_dataset", "tile_plan", "class_registry", "params:dataset", "params:ingest"],
                 ["tiles", "tile_manifest"], name="write_tiles"),
            Node(nodes.ingest_target, ["target_raw_dataset", "class_registry", "params:target", "params:ingest"],
                 ["target_tiles", "target_manifest", "target_problems"], name="ingest_target"),
            Node(nodes.export_tisynth_jsonl, "tile_manifest", "tisynth_jsonl", name="export_tisynth_jsonl"),
            Node(nodes.summarise_classes, ["tile_manifest", "class_registry"],
                 ["class_statistics", "class_statistics_plot", "ingest_metrics"], name="summarise_classes"),
        ],
        namespace="ingest",  # one group in kedro-viz; dataset names stay global
        prefix_datasets_with_namespace=False,
    )
