"""MLflow runs named after what ran, tagged for comparison, in a model-training experiment."""

from __future__ import annotations

import mlflow
import pytest

from tisynth.mlflow_runs import EXPERIMENT_KIND_TAG, MODEL_TRAINING, folder_label, label_active_run, run_label
from tisynth.segmentation import tracking


def _params(pipelines=(), env="local", runtime=None, **selections):
    return {"pipeline_names": list(pipelines), "env": env, "runtime_params": runtime or {}, **selections}


def test_the_name_says_pipelines_dataset_and_the_settings_given():
    label = run_label(_params(), {"dataset": {"root": None}})
    assert (label.name, label.setting) == ("all · demo", "demo")
    assert label.tags == {"pipeline": "all", "dataset": "demo", "setting": "demo"}

    runtime = {"dataset": {"root": "/data/gid5", "labelled_fraction": 0.25},
               "references": {"pool": {"splits": "unlabeled"}}}
    label = run_label(_params(["segment"], env="folder", runtime=runtime), {"dataset": {"root": "/data/gid5"}})
    setting = "gid5 · env=folder · dataset.labelled_fraction=0.25 · references.pool.splits=unlabeled"
    assert (label.name, label.setting) == (f"segment · {setting}", setting)

    # a folder set by the environment's parameters counts as well as one given by --params
    label = run_label(_params(["ingest"], env="mine"), {"dataset": {"root": "/x/loveda"}})
    assert label.name == "ingest · loveda · env=mine"


def test_targets_paths_lists_selections_and_long_names():
    runtime = {"dataset": {"root": "/d/gid5_shift/source"}, "target": {"root": "/d/gid5_shift/target"},
               "generator": {"autoencoder": {"weights_dir": "/models/taef2"}}, "segment": {"seeds": [0, 1, 2]}}
    label = run_label(_params(["references", "ingest"], runtime=runtime, namespaces=["filter"]))
    assert label.name == ("ingest+references · gid5_shift/source→gid5_shift/target · "
                          "generator.autoencoder.weights_dir=taef2 · segment.seeds=0,1,2 · namespaces=filter")
    assert folder_label("/data/gid5/") == "gid5" and folder_label("images") == "images"
    many = {f"k{i}": "v" * 30 for i in range(20)}
    assert len(run_label(_params(runtime={"x": many})).name) <= 240


@pytest.fixture
def store(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield mlflow.MlflowClient()
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def test_the_top_level_run_is_renamed_tagged_and_its_experiment_marked(store):
    experiment = mlflow.set_experiment("tisynth")
    assert EXPERIMENT_KIND_TAG not in experiment.tags
    with mlflow.start_run(run_name="segment") as run:  # what kedro-mlflow opens for --pipeline=segment
        label_active_run(_params(["segment"], env="folder", runtime={"segment": {"seeds": [0, 1]}}),
                         {"dataset": {"root": "/data/gid5"}})
        with tracking.child_run("baseline-seed1", tags={"variant": "baseline", "seed": "1"}) as child_id:
            pass
    parent = store.get_run(run.info.run_id)
    assert parent.info.run_name == "segment · gid5 · env=folder · segment.seeds=0,1"
    assert parent.data.tags["setting"] == "gid5 · env=folder"  # runs of one setting compare across seeds
    child = store.get_run(child_id)
    assert child.info.run_name == "baseline-seed1"
    assert {k: child.data.tags[k] for k in ("variant", "seed", "setting", "dataset", "pipeline")} == {
        "variant": "baseline", "seed": "1", "setting": "gid5 · env=folder", "dataset": "gid5", "pipeline": "segment"}
    assert child.data.tags["mlflow.parentRunId"] == run.info.run_id
    assert store.get_experiment(experiment.experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING


def test_a_run_named_by_the_user_and_a_chosen_kind_are_kept(store):
    experiment = mlflow.set_experiment("tisynth")
    store.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, "genai_development")
    with mlflow.start_run(run_name="my-run") as run:
        assert label_active_run(_params(["ingest"]), {}).name == "ingest · demo"
    assert store.get_run(run.info.run_id).info.run_name == "my-run"
    assert store.get_run(run.info.run_id).data.tags["setting"] == "demo"
    assert store.get_experiment(experiment.experiment_id).tags[EXPERIMENT_KIND_TAG] == "genai_development"
    assert label_active_run(_params(), {}) is None  # no active run: nothing to label


def test_the_runs_address_names_the_experiment_and_the_model_training_view(store, tmp_path, capsys):
    from tisynth.mlflow_runs import main, runs_url

    missing = tmp_path / "none.db"
    assert runs_url(f"sqlite:///{missing}") is None and not missing.exists()  # nothing created
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_experiment("other")
    assert runs_url(uri) is None
    experiment = mlflow.set_experiment("tisynth")
    assert runs_url(uri, port=5055) == (f"http://127.0.0.1:5055/#/experiments/{experiment.experiment_id}/runs"
                                        "?workflowType=machine_learning")
    assert main([uri]) == 0
    assert capsys.readouterr().out.strip().endswith(f"/#/experiments/{experiment.experiment_id}/runs"
                                                    "?workflowType=machine_learning")
