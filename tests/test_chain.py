"""The whole chain, `kedro run`, on two small generated domains that differ in colour and texture:
the source's masks, Refs from the target, evaluation on both; then the notebook on its outputs."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, make_project, run_kedro
from tisynth.ingest.demo_scenes import DEMO_CLASSES, DemoSceneConfig, write_demo_dataset
from tisynth.params import deep_merge
from tisynth.validation import ParameterError

pytestmark = pytest.mark.slow  # the whole chain on the embedded default

# every budget cut to the bone: the test checks the wiring and the contracts, not quality
FAST = {
    "demo_scenes": {"n_scenes": 4, "size": 128},
    "train_generator": {"base": {"steps": 12}, "A": {"steps": 8}, "B": {"steps": 8},
                        "common": {"checkpoint_every": 4, "batch_size": 4, "log_every": 4},
                        "report": {"tiles": 2, "sample": {"steps": 2}}},
    "references": {"seeds_per_pair": 2},
    "sample": {"sampler": {"steps": 2}, "chunk": 8, "quality": {"images": 8, "min_images": 2, "real_split": "train"}},
    "read_generator": {"tiles": 2, "stride": 1, "guidance": [2.0]},
    "segmenter": {"train": {"iterations": 20, "val_interval": 10, "checkpoint_interval": 10, "log_interval": 10}},
}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import os

    base = tmp_path_factory.mktemp("chain")
    project = make_project(base / "project")
    shutil.copy(REPO / "notebooks" / "explore_run.ipynb", base / "explore_run.ipynb")
    (project / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / "explore_run.ipynb", project / "notebooks" / "explore_run.ipynb")
    target = base / "target"  # another look: colder, darker, rougher textures
    write_demo_dataset(target, DemoSceneConfig(n_scenes=2, size=128, seed=11, color_gain=(0.75, 0.9, 1.3),
                                               brightness=-25, texture=2.5), DEMO_CLASSES)
    cwd = os.getcwd()
    os.chdir(project)
    try:
        run_kedro(project, None, params={**FAST, "target": {"root": str(target), "images": "scenes", "masks": "labels"}})
    finally:
        os.chdir(cwd)
    return project


def _versioned(path: Path) -> pd.DataFrame:
    return pd.read_parquet(sorted(path.glob("*/*.parquet"))[-1]) if path.is_dir() else pd.read_parquet(path)


def test_refs_come_from_the_target_domain(chain):
    data = chain / "data"
    target = pd.read_parquet(data / "03_primary/target_manifest.parquet")
    synthetic = _versioned(data / "07_model_output/synthetic_manifest.parquet")
    source = _versioned(data / "03_primary/tile_manifest.parquet")
    assert len(target) == 8 and len(synthetic) == 2 * (source["split"] == "train").sum()
    assert set(synthetic["ref_domain"]) == {"target"} and set(synthetic["ref_name"]) <= set(target["name"])
    assert set(synthetic["mask_name"]) <= set(source["name"])
    images = data / "07_model_output/synthetic"
    assert all((images / p).is_file() for p in synthetic["image"])
    assert len(set(synthetic["generator_version"])) == 1
    filtered = pd.read_parquet(data / "07_model_output/filtered_manifest.parquet")
    assert set(filtered["name"]) == set(synthetic["name"])
    assert all((data / "07_model_output/filtered_synthetic" / p).is_file() for p in filtered["filtered_mask"])


def test_report_holds_both_evaluations(chain):
    reporting = chain / "data/08_reporting"
    results = pd.read_csv(reporting / "segment_results.csv")
    assert set(results["eval_set"]) == {"test", "target"}
    assert set(results["variant"]) == {"baseline", "augmented"}
    markdown = (reporting / "segment_comparison.md").read_text()
    assert "## test" in markdown and "## target" in markdown
    for figure in ("class_statistics", "ref_augmentation_preview", "generator_loss", "generator_samples",
                   "synthetic_grid", "filter_examples", "segment_per_class_iou", "segment_confusion_matrices",
                   "segment_examples"):
        assert (reporting / f"{figure}.png").stat().st_size > 5000, figure


def test_one_mlflow_run_with_curves_figures_and_child_runs(chain):
    with sqlite3.connect(chain / "mlflow.db") as db:
        runs = db.execute("select run_uuid, name, status, artifact_uri from runs").fetchall()
        # `kedro run` on the demo scenes with a target folder, named after what ran
        parent = [r for r in runs if r[1].startswith("all · demo→")]
        assert len(parent) == 1 and parent[0][2] == "FINISHED", [r[1] for r in runs]
        parent_id = parent[0][0]
        children = dict(db.execute("select r.name, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
                                   "where t.key = 'mlflow.parentRunId'").fetchall())
        tags = {(name, key): value for name, key, value in db.execute(
            "select r.name, t.key, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key in ('variant', 'seed', 'setting', 'role')").fetchall()}
        metrics = {k for (k,) in db.execute("select distinct key from metrics where run_uuid = ?", (parent_id,))}
        params = {k for (k,) in db.execute("select key from params where run_uuid = ?", (parent_id,))}
    setting = tags[(parent[0][1], "setting")]
    assert setting.startswith("demo→") and "demo_scenes.size=128" in setting
    assert tags[("augmented-seed0", "variant")] == "augmented" and tags[("augmented-seed0", "seed")] == "0"
    assert tags[("baseline-seed0", "setting")] == tags[("real_segmenter", "setting")] == setting
    assert tags[("real_segmenter", "role")] == "filter_segmenter"
    assert {"real_segmenter", "baseline-seed0", "augmented-seed0"} <= set(children)
    assert set(children.values()) == {parent_id}
    assert {"generator_base/loss", "generator_B/loss", "generator_B/lr", "generator_B/effective_batch_size"} <= metrics
    assert "generator_A/loss" not in metrics  # a mask-first base needs no stage-A ControlNet
    assert {"reading.mIoU_g2", "reading.dominant_acc_g2", "reading.mIoU_real"} <= metrics, sorted(metrics)
    from tisynth.generator.quality import fid_available

    if fid_available():
        assert {"quality.fid", "quality.kid_mean"} <= metrics
    assert {"segment.target.augmented.mIoU", "segment.test.baseline.mIoU"} <= metrics, sorted(metrics)
    assert {"generator.mask_gain_t950", "generator.loss_true_mask_t950", "generator.loss_other_mask_t600"} <= metrics
    assert "train_generator.B.steps" in params and "dataset.kind" in params
    artifacts = Path(parent[0][3].removeprefix("file://"))
    names = {p.name for p in artifacts.rglob("*.png")}
    assert {"synthetic_grid.png", "generator_samples.png", "generator_loss.png", "class_statistics.png"} <= names


def test_sampling_again_does_no_work(chain):
    images = chain / "data/07_model_output/synthetic/images"
    before = {p.name: p.stat().st_mtime_ns for p in images.iterdir()}
    run_kedro(chain, ["sample"], params=FAST | {"target": {"root": ""}})
    assert {p.name: p.stat().st_mtime_ns for p in images.iterdir()} == before


def test_the_notebook_runs_headless_on_the_catalog(chain):
    import nbformat
    from nbclient import NotebookClient

    path = chain / "notebooks" / "explore_run.ipynb"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "not produced yet" not in text
    assert "Refs from the target domain" in text and "kept" in text
    pictures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert pictures >= 4


# one nested typo per stage: the run must fail before its first node and leave data/ as it was
TYPOS = {
    "ingest": {"ingest": {"split": {"seeed": 1}}},
    "references": {"references": {"pairing": {"stratgy": "random"}}},
    "train_generator": {"train_generator": {"B": {"learning_rat": 1e-3}}},
    "sample": {"sample": {"sampler": {"guidance_scal": 2.0}}},
    "filter": {"filter": {"tolerence": 1.2}},
    "read_generator": {"read_generator": {"guidanc": [2.0]}},
    "segment": {"segment": {"mix": {"real_fractoin": 0.5}}},
}


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("stage", list(TYPOS))
def test_a_nested_typo_fails_before_any_output_changes(chain, stage):
    before = _snapshot(chain / "data")
    assert len(before) > 100  # the finished chain's outputs
    with pytest.raises(ParameterError, match="did you mean"):
        run_kedro(chain, [stage], params=deep_merge(FAST | {"target": {"root": ""}}, TYPOS[stage]))
    assert _snapshot(chain / "data") == before
