"""`kedro run` of filter and segment on the embedded default, with kedro-mlflow's nested runs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from tests.conftest import run_kedro

SMALL = {"segmenter": {"train": {"iterations": 30, "val_interval": 15, "checkpoint_interval": 15,
                                 "log_interval": 15}}}


def _fake_sample(project: Path) -> int:
    """Stand-in for the ``sample`` pipeline: noisy copies of the real training tiles, saved
    through the project's catalog (``synthetic_images``, ``synthetic_manifest``)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from tisynth.io import write_image

    bootstrap_project(project)
    with KedroSession.create(project_path=project) as session:
        catalog = session.load_context().catalog
        tiles, manifest = catalog.load("tiles"), catalog.load("tile_manifest")
        train = manifest[manifest["split"] == "train"].head(12)
        rng = np.random.default_rng(0)

        def writer(folder: Path) -> None:
            for i, row in enumerate(train.itertuples()):
                img = tiles.read_image(row.image).astype(float)
                if i % 4 == 3:
                    img = img[::-1]  # content that contradicts its mask
                noisy = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
                write_image(folder / "images" / f"{row.name}_seed_0.png", noisy)

        catalog.save("synthetic_images", writer)
        catalog.save("synthetic_manifest", pd.DataFrame({
            "name": [f"{n}_seed_0" for n in train["name"]], "image": [f"images/{n}_seed_0.png" for n in train["name"]],
            "mask_name": train["name"].tolist(), "mask": train["mask"].tolist(), "ref_name": train["name"].tolist(),
            "prompt": train["prompt"].tolist(), "seed": 0, "generator_version": "test",
        }))
    return len(train)


def _runs(project: Path) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(project / "mlflow.db") as db:
        rows = db.execute(
            "select r.run_uuid, r.name, r.status, t.value from runs r "
            "left join tags t on t.run_uuid = r.run_uuid and t.key = 'mlflow.parentRunId'").fetchall()
    by_id = {rid: name for rid, name, _, _ in rows}
    return {name: (status, by_id.get(parent)) for _, name, status, parent in rows}


def _tags(project: Path, run_name: str) -> dict[str, str]:
    with sqlite3.connect(project / "mlflow.db") as db:
        return dict(db.execute("select t.key, t.value from tags t join runs r on r.run_uuid = t.run_uuid "
                               "where r.name = ?", (run_name,)).fetchall())


def _metrics(project: Path, run_name: str) -> set[str]:
    with sqlite3.connect(project / "mlflow.db") as db:
        rows = db.execute("select m.key from metrics m join runs r on r.run_uuid = m.run_uuid where r.name = ?",
                          (run_name,)).fetchall()
    return {k for (k,) in rows}


def test_kedro_run_filter_and_segment(kedro_project):
    run_kedro(kedro_project, ["ingest"])
    n_synthetic = _fake_sample(kedro_project)
    run_kedro(kedro_project, ["filter"], params=SMALL)
    run_kedro(kedro_project, ["segment"], params=SMALL)

    data = kedro_project / "data"
    fm = pd.read_parquet(data / "07_model_output/filtered_manifest.parquet")
    assert len(fm) == n_synthetic
    assert all((data / "07_model_output/filtered_synthetic" / p).is_file() for p in fm["filtered_mask"])
    for name in ("filter_examples.png", "filter_statistics.csv", "segment_comparison.csv", "segment_comparison.md",
                 "segment_per_class_iou.png", "segment_confusion_matrices.png", "segment_examples.png"):
        assert (data / "08_reporting" / name).stat().st_size > 0, name
    assert (data / "06_models/baseline_segmenter/model.safetensors").is_file()

    runs = _runs(kedro_project)
    # one parent run per `kedro run`, named after what ran, one nested child run per trained segmenter
    setting = ("demo · segmenter.train.iterations=30 · segmenter.train.val_interval=15 · "
               "segmenter.train.checkpoint_interval=15 · segmenter.train.log_interval=15")
    filter_run, segment_run = f"filter · {setting}", f"segment · {setting}"
    assert runs["real_segmenter"] == ("FINISHED", filter_run)
    assert runs["baseline-seed0"] == ("FINISHED", segment_run)
    assert runs["augmented-seed0"] == ("FINISHED", segment_run)
    for child in ("baseline-seed0", "augmented-seed0"):
        assert {"test.mIoU", "test.OA", "test.mAcc", "val.mIoU"} <= _metrics(kedro_project, child)
        assert {k: _tags(kedro_project, child)[k] for k in ("variant", "seed", "setting", "role")} == {
            "variant": child.split("-")[0], "seed": "0", "setting": setting, "role": "compared_segmenter"}
    assert _tags(kedro_project, "real_segmenter")["role"] == "filter_segmenter"
    assert "train.loss" in _metrics(kedro_project, "augmented-seed0")
    assert {"segment.test.baseline.mIoU", "segment.test.augmented.mIoU"} <= _metrics(kedro_project, segment_run)
    assert "filter.kept_pairs" in _metrics(kedro_project, filter_run)
