"""The project as its users drive it: the kedro CLI, kedro-viz, DVC."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

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


def test_kedro_run_with_several_pipelines_from_the_command_line(kedro_project):
    cli([str(BIN / "kedro"), "run", "--pipelines=ingest,references", "--params=demo_scenes.size=128"], kedro_project)
    plan = pd.read_parquet(sorted((kedro_project / "data/04_feature/synthesis_plan.parquet").glob("*/*.parquet"))[-1])
    assert len(plan) > 0 and (kedro_project / "mlflow.db").is_file()


def test_kedro_viz_build_exports_the_pipelines(kedro_project):
    cli([str(BIN / "kedro"), "viz", "build"], kedro_project)
    assert (kedro_project / "build" / "index.html").is_file()
    main = kedro_project / "build" / "api" / "main"
    assert main.is_file() and "train_generator_stage_b" in main.read_text()


def test_dvc_yaml_is_generated_from_the_catalog_and_dvc_draws_the_dag():
    cli([sys.executable, "scripts/dvc_stages.py", "--check"], REPO)
    dag = cli([str(BIN / "dvc"), "dag"], REPO)
    for stage in STAGES:
        assert stage in dag
    text = (REPO / "dvc.yaml").read_text()
    assert "kedro run --pipeline train_generator" in text and "data/07_model_output/synthetic" in text
