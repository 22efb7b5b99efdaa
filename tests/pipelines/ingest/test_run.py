"""The ``ingest`` pipeline through Kedro: the embedded default and the folder environment."""

from __future__ import annotations

import glob
import sqlite3

import pandas as pd
import pytest

from tests.conftest import run_kedro
from tests.test_ingest import make_folder


def latest_manifest(project):
    files = sorted(glob.glob(str(project / "data/03_primary/tile_manifest.parquet/*/tile_manifest.parquet")))
    return pd.read_parquet(files[-1]), len(files)


def mlflow_runs(project):
    with sqlite3.connect(project / "mlflow.db") as db:
        return db.execute("select name, status from runs").fetchall()


def test_default_ingest_writes_demo_scenes_tiles_and_mlflow_run(kedro_project):
    run_kedro(kedro_project, ["ingest"])
    raw = kedro_project / "data/01_raw/demo"
    assert len(list((raw / "scenes").glob("*.tif"))) == 4 and (raw / "classes.csv").is_file()
    manifest, versions = latest_manifest(kedro_project)
    assert versions == 1 and len(manifest) > 40
    assert set(manifest["split"]) == {"train", "val", "test"}
    tiles = kedro_project / "data/02_intermediate/tiles"
    assert sorted(p.name for p in (tiles / "images").iterdir()) == sorted(m.split("/")[1] for m in manifest["image"])
    assert manifest["crs"].notna().all() and manifest["transform"].notna().all()
    jsonl = pd.read_json(kedro_project / "data/03_primary/tisynth.jsonl", lines=True)
    assert list(jsonl.columns[:3]) == ["source", "target", "prompt"] and len(jsonl) == len(manifest)
    assert (kedro_project / "data/08_reporting/class_statistics.png").stat().st_size > 5000
    assert mlflow_runs(kedro_project) == [("ingest · demo", "FINISHED")]

    # a rerun replaces the tiles cleanly, versions the manifest and opens a second MLflow run
    run_kedro(kedro_project, ["ingest"])
    again, versions = latest_manifest(kedro_project)
    assert versions == 2 and again.equals(manifest)
    assert sorted(p.name for p in (tiles / "images").iterdir()) == sorted(m.split("/")[1] for m in manifest["image"])
    assert [p.name for p in tiles.parent.iterdir() if p.name.startswith(".")] == []
    assert len(mlflow_runs(kedro_project)) == 2


def test_folder_environment_reads_a_users_dataset(kedro_project, tmp_path):
    root = make_folder(tmp_path / "userdata", n=6)
    before = sorted(p.name for p in root.rglob("*"))
    run_kedro(kedro_project, ["ingest"], env="folder", params={"dataset": {"root": str(root)}})
    manifest, _ = latest_manifest(kedro_project)
    assert len(manifest) == 6 and manifest["split"].value_counts().to_dict() == {"train": 2, "val": 2, "test": 2}
    assert sorted(p.name for p in root.rglob("*")) == before  # the user's folder is only read


def test_folder_environment_without_root_is_a_clear_error(kedro_project):
    with pytest.raises(Exception, match="dataset.root"):
        run_kedro(kedro_project, ["ingest"], env="folder")


def test_bad_dataset_stops_before_any_tile_is_written(kedro_project, tmp_path):
    root = make_folder(tmp_path / "userdata", n=4)
    (root / "masks" / "t1.png").unlink()
    with pytest.raises(Exception, match=r"t1\.jpg: missing mask"):
        run_kedro(kedro_project, ["ingest"], env="folder", params={"dataset": {"root": str(root)}})
    assert not (kedro_project / "data/02_intermediate/tiles").exists()
    run_kedro(kedro_project, ["ingest"], env="folder",
              params={"dataset": {"root": str(root)}, "ingest": {"skip_bad": True}})
    problems = pd.read_csv(kedro_project / "data/08_reporting/ingest_problems.csv")
    assert len(problems) == 1 and "missing mask" in problems["problem"].iloc[0]
    assert len(latest_manifest(kedro_project)[0]) == 3


def test_demo_writer_never_overwrites_real_data(kedro_project, tmp_path):
    root = make_folder(tmp_path / "userdata", n=2)
    with pytest.raises(Exception, match="refusing to write generated data"):
        run_kedro(kedro_project, ["ingest"], params={"dataset": {"root": str(root)}})
    assert (root / "images" / "t0.jpg").is_file()


def test_each_project_keeps_its_own_mlflow_store_within_one_process(kedro_project, tmp_path, monkeypatch):
    """``sqlite:///mlflow.db`` is anchored at the project root: a second project run from the same
    process (and from another working directory) must not write into the first one's store."""
    import shutil

    run_kedro(kedro_project, ["ingest"])
    other = tmp_path / "other"
    shutil.copytree(kedro_project, other, ignore=shutil.ignore_patterns("mlflow.db", "mlruns", "data"))
    for layer in ("01_raw", "02_intermediate", "03_primary", "08_reporting"):
        (other / "data" / layer).mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_kedro(other, ["ingest"])
    # one finished run in each store (how runs are named is tests/test_mlflow_runs.py's business)
    assert [status for _, status in mlflow_runs(kedro_project)] == ["FINISHED"]
    assert [status for _, status in mlflow_runs(other)] == ["FINISHED"]
    assert not (elsewhere / "mlflow.db").exists()


def test_relative_sqlite_stores_are_anchored_at_the_project(tmp_path):
    from tisynth.hooks import anchor_sqlite_uri

    assert anchor_sqlite_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert anchor_sqlite_uri("sqlite:////srv/mlflow.db", tmp_path) == "sqlite:////srv/mlflow.db"
    assert anchor_sqlite_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    assert anchor_sqlite_uri(None, tmp_path) is None
