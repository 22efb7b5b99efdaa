"""The project as its users drive it: the kedro CLI, kedro-viz, DVC."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent
STAGES = ["ingest", "references", "train_generator", "sample", "filter", "read_generator", "segment"]


def cli(args: list[str], cwd: Path, timeout: int = 600) -> str:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def test_registry_lists_every_pipeline():
    out = cli([str(BIN / "kedro"), "registry", "list"], REPO)
    listed = {line.strip("- ").strip() for line in out.splitlines() if line.startswith("- ")}
    assert set(STAGES) | {"synthesize", "__default__"} <= listed


@pytest.mark.slow
def test_kedro_run_with_several_pipelines_from_the_command_line(kedro_project):
    cli([str(BIN / "kedro"), "run", "--pipelines=ingest,references", "--params=demo_scenes.size=128"], kedro_project)
    plan = pd.read_parquet(sorted((kedro_project / "data/04_feature/synthesis_plan.parquet").glob("*/*.parquet"))[-1])
    assert len(plan) > 0 and (kedro_project / "mlflow.db").is_file()


def test_dvc_yaml_is_generated_from_the_catalog_and_dvc_draws_the_dag():
    cli([sys.executable, "scripts/dvc_stages.py", "--check"], REPO)
    dag = cli([str(BIN / "dvc"), "dag"], REPO)
    for stage in STAGES:
        assert stage in dag
    text = (REPO / "dvc.yaml").read_text()
    assert "kedro run --pipeline train_generator" in text and "data/07_model_output/synthetic" in text


LAYERS = ["raw", "intermediate", "primary", "feature", "model_input", "models", "model_output", "reporting"]


def test_every_node_sits_in_its_stage_namespace_and_every_dataset_on_a_layer():
    """kedro-viz draws one expandable group per stage and the datasets in layers."""
    from kedro.config import OmegaConfigLoader
    from kedro.framework.project import pipelines
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(REPO)
    for stage in STAGES:
        nodes = pipelines[stage].nodes
        assert nodes and {n.namespace for n in nodes} == {stage}, stage
        assert all(n.name == f"{stage}.{n.func.__name__}" for n in nodes), [n.name for n in nodes]
    default = pipelines["__default__"]
    assert len(default.only_nodes_with_namespaces(["filter"]).nodes) == len(pipelines["filter"].nodes)
    used = {d for d in default.datasets() if not d.startswith("params:") and d != "parameters"}
    for env in ("base", "folder", "sd15"):
        catalog = OmegaConfigLoader(conf_source=str(REPO / "conf"), base_env="base", default_run_env=env,
                                    runtime_params={"dataset": {"root": "x"}})["catalog"]
        assert used <= set(catalog), sorted(used - set(catalog))  # every artifact has a catalog entry
        layers = {name: entry.get("metadata", {}).get("kedro-viz", {}).get("layer") for name, entry in catalog.items()}
        assert {n: l for n, l in layers.items() if l not in LAYERS} == {}, env


@pytest.mark.slow
def test_kedro_viz_build_shows_the_stages_and_layers(kedro_project):
    import json

    out = cli([str(BIN / "kedro"), "viz", "build"], kedro_project)
    assert "Layers visualisation is disabled" not in out, out[-3000:]
    main = json.loads((kedro_project / "build" / "api" / "main").read_text())
    assert set(STAGES) <= set(main["modular_pipelines"]["__root__"]["children"][i]["id"]
                              for i in range(len(main["modular_pipelines"]["__root__"]["children"])))
    data = [n for n in main["nodes"] if n["type"] == "data"]
    assert data and all(n["layer"] in LAYERS for n in data), [n["name"] for n in data if n["layer"] not in LAYERS]
    # the layer view is on and runs down the chain, raw data to reports (tests/test_layers.py)
    assert main["layers"] == [layer for layer in LAYERS if layer != "model_output"]
