"""What a ``kedro run``'s MLflow run is called and tagged, and what kind of experiment it is in.

kedro-mlflow names a run after its pipeline (``__default__`` for ``kedro run``). tisynth names it
after what ran: the pipelines, the dataset (``demo`` for the embedded default) and the settings
given on the command line (environment, ``--params``, node selections), e.g.
``all · demo`` or ``segment · gid5 · env=folder · dataset.labelled_fraction=0.25``. The run also
gets the tags ``pipeline``, ``dataset`` and ``setting`` (the name without the pipelines and the
segmenters' seeds), which the segmenters' child runs copy
(``tisynth.segmentation.tracking.child_run``), so that the MLflow UI can group and compare runs by
setting, variant and seed.

The experiment is marked as a model-training experiment (:data:`EXPERIMENT_KIND_TAG`). MLflow UIs
that read the mark open such an experiment on its runs; the UI of MLflow 3.17 instead follows its
own GenAI / Model training switch (GenAI until switched, kept by the browser, or set by the
address's ``workflowType``), so :func:`runs_url` gives the address of the experiment's runs with
``workflowType=machine_learning``, which ``python -m tisynth.mlflow_runs`` prints
(``make mlflow-ui``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

EXPERIMENT = "tisynth"
"""The experiment of ``conf/base/mlflow.yml``."""
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""The experiment tag that holds an experiment's kind in MLflow 3 (its "experiment type")."""
MODEL_TRAINING = "custom_model_development"
"""Its value for a machine-learning (model-training) experiment; GenAI ones are ``genai_development``."""

DEFAULT_PIPELINE = "__default__"
SEPARATOR = " · "
MAX_NAME = 240
"""MLflow keeps run names up to 250 characters."""
MAX_VALUE = 40
"""A longer parameter value is shortened in the name (the run's parameters keep it whole)."""

SEED_KEYS = ("segment.seeds", "segmenter.train.seed")
"""Settings that name the segmenters' seeds: in the run's name, not in its ``setting`` tag, since
each child run has its own ``seed`` tag and runs of one setting are compared across seeds."""

_SELECTIONS = ("namespaces", "node_names", "from_nodes", "to_nodes", "from_inputs", "to_outputs", "tags")
_DEFAULT_ENVS = (None, "", "local", "base")
_GENERIC_FOLDERS = {"source", "target", "images", "data", "dataset"}


@dataclass(frozen=True)
class RunLabel:
    """A top-level run's name and the tags that say what ran."""

    pipeline: str
    dataset: str
    settings: tuple[str, ...]

    @property
    def setting(self) -> str:
        """The dataset and the settings but the seeds (:data:`SEED_KEYS`): what a comparison
        across runs groups by."""
        kept = (s for s in self.settings if s.split("=", 1)[0] not in SEED_KEYS)
        return _clip(SEPARATOR.join((self.dataset, *kept)))

    @property
    def name(self) -> str:
        return _clip(SEPARATOR.join((self.pipeline, self.dataset, *self.settings)))

    @property
    def tags(self) -> dict[str, str]:
        return {"pipeline": self.pipeline, "dataset": self.dataset, "setting": self.setting}


def _clip(text: str, limit: int = MAX_NAME) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def folder_label(root: Any) -> str:
    """A dataset folder's short name: its last component, with its parent when that component
    is a generic word (``gid5_shift/source``)."""
    parts = [p for p in PurePath(str(root)).parts if p not in ("/", "\\")]
    if not parts:
        return str(root)
    if parts[-1].lower() in _GENERIC_FOLDERS and len(parts) > 1:
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1]


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        text = ",".join(_value(v) for v in value)
    elif isinstance(value, str) and ("/" in value or "\\" in value):
        text = folder_label(value)
    else:
        text = str(value)
    return _clip(text, MAX_VALUE)


def _root(params: Mapping[str, Any], block: str) -> str | None:
    value = (params.get(block) or {}).get("root") if isinstance(params.get(block), Mapping) else None
    return str(value) if value not in (None, "") else None


def run_label(run_params: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> RunLabel:
    """The label of a ``kedro run`` from Kedro's ``run_params`` (``pipeline_names``, ``env``,
    ``runtime_params``, the node selections) and the run's merged parameters (for the dataset
    folder, which an environment may set as well as ``--params``)."""
    names = run_params.get("pipeline_names") or run_params.get("pipeline_name") or [DEFAULT_PIPELINE]
    if isinstance(names, str):
        names = [names]
    pipeline = "+".join(sorted("all" if n == DEFAULT_PIPELINE else str(n) for n in names))

    runtime = dict(run_params.get("runtime_params") or run_params.get("extra_params") or {})
    merged = {**(params or {})}
    for block in ("dataset", "target"):  # --params win over the environment's files
        if isinstance(runtime.get(block), Mapping) and "root" in runtime[block]:
            merged[block] = {**(merged.get(block) or {}), "root": runtime[block]["root"]}
    source, target = _root(merged, "dataset"), _root(merged, "target")
    dataset = folder_label(source) if source else "demo"
    if target:
        dataset += f"→{folder_label(target)}"

    settings: list[str] = []
    env = run_params.get("env")
    if env not in _DEFAULT_ENVS:
        settings.append(f"env={env}")
    for key, value in _flatten(runtime).items():
        if key not in ("dataset.root", "target.root"):
            settings.append(f"{key}={_value(value)}")
    for key in _SELECTIONS:
        value = run_params.get(key)
        if value:
            settings.append(f"{key}={_value(list(value) if isinstance(value, Sequence) else value)}")
    return RunLabel(pipeline, dataset, tuple(settings))


def label_active_run(run_params: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> RunLabel | None:
    """Rename the active top-level run that kedro-mlflow opened under its pipeline name, tag it
    with what ran, and mark its experiment as a model-training one unless it has a kind. A run
    named otherwise (``tracking.run.name`` in ``mlflow.yml``, or one opened before the session)
    keeps its name but gets the tags. Returns the label, or None without an active run."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return None
    label = run_label(run_params, params)
    names = run_params.get("pipeline_names") or [DEFAULT_PIPELINE]
    default_name = "+".join([names] if isinstance(names, str) else names)
    mlflow.set_tags(label.tags)
    if run.info.run_name == default_name:
        mlflow.set_tag("mlflow.runName", label.name)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment(run.info.experiment_id)
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
        client.set_experiment_tag(run.info.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return label


def runs_url(tracking_uri: str, host: str = "127.0.0.1", port: int | str = 5000,
             experiment: str = EXPERIMENT) -> str | None:
    """The MLflow UI address that opens on the runs of ``experiment`` in the store
    ``tracking_uri``, or None while the store has no such experiment (a SQLite store that does not
    exist yet is not created)."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        from pathlib import Path

        path = tracking_uri[len(prefix):]
        if path != ":memory:" and not Path(path).is_file():
            return None
    import mlflow

    found = mlflow.MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    if found is None:
        return None
    return f"http://{host}:{port}/#/experiments/{found.experiment_id}/runs?workflowType=machine_learning"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tisynth.mlflow_runs [TRACKING_URI [HOST [PORT]]]``: print where the MLflow UI
    shows the runs of the ``tisynth`` experiment."""
    args = list(sys.argv[1:] if argv is None else argv)
    uri, host, port = (args + ["sqlite:///mlflow.db", "127.0.0.1", "5000"][len(args):])[:3]
    url = runs_url(uri, host, port)
    print(f"MLflow: the runs of {EXPERIMENT!r} are at {url}" if url else
          f"MLflow: no {EXPERIMENT!r} experiment in {uri} yet (`kedro run` makes one)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
