"""Shared fixtures: the repository root, the shared real data, and a throw-away Kedro project."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker process gets one torch thread (and so do the processes
    its tests start), so that N workers on N cores do not oversubscribe the CPU."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"
        import torch

        torch.set_num_threads(1)


def shared_data_dir() -> Path:
    """Real data beside the repository (override with TISYNTH_SHARED_DATA)."""
    return Path(os.environ.get("TISYNTH_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        message = f"real data folder {path} not found (set TISYNTH_SHARED_DATA)"
        if os.environ.get("TISYNTH_REQUIRE_SHARED"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def make_project(project: Path) -> Path:
    """A copy of the project's configuration in ``project`` (created), so that pipeline runs
    there write their data and MLflow runs there, not into the repository."""
    project.mkdir(parents=True)
    shutil.copytree(REPO / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(REPO / name, project / name)
    (project / "src").mkdir()  # the package itself is installed; Kedro only checks the folder
    for layer in ("01_raw", "02_intermediate", "03_primary", "04_feature", "05_model_input", "06_models",
                  "07_model_output", "08_reporting"):
        (project / "data" / layer).mkdir(parents=True)
    return project


@pytest.fixture
def kedro_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """:func:`make_project` in a temporary folder, made the working directory."""
    project = make_project(tmp_path / "project")
    monkeypatch.chdir(project)
    return project


def run_kedro(project: Path, pipelines: list[str] | None = None, env: str | None = None,
              params: dict | None = None) -> dict:
    """Run pipelines of the project in ``project`` through a KedroSession."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    import mlflow

    bootstrap_project(project)
    try:
        with KedroSession.create(project_path=project, env=env, runtime_params=params or {}) as session:
            return session.run(pipeline_names=pipelines)
    finally:
        # one process runs several sessions here; each `kedro run` on the command line is its own
        while mlflow.active_run():
            mlflow.end_run()
