"""MLflow helpers: one nested child run per trained segmenter.

Inside ``kedro run`` kedro-mlflow opens the parent run; :func:`child_run` opens a nested run
under it (so the MLflow UI can compare baseline and augmented side by side). Outside an
active run (plain Python, tests) nothing is logged and no run is created.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger("tisynth.segmentation")

MAX_PARAM_LENGTH = 500


def flatten(params: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mapping → ``{"a.b.c": value}``."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def safe_metric_name(name: str) -> str:
    """MLflow names allow letters, digits and ``_ - . / space``; replace anything else by ``_``."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in str(name))


def _mlflow() -> Any:
    import mlflow

    return mlflow


def active() -> bool:
    """Whether an MLflow run is active (e.g. inside ``kedro run`` with kedro-mlflow)."""
    try:
        return _mlflow().active_run() is not None
    except ImportError:  # pragma: no cover - mlflow is a project dependency
        return False


INHERITED_TAGS = ("pipeline", "dataset", "setting")
"""Tags of the parent run (``tisynth.mlflow_runs``) that every child run carries too, so that
child runs of several ``kedro run``s can be grouped by setting in the MLflow UI."""


@contextlib.contextmanager
def child_run(name: str, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None, enabled: bool = True) -> Iterator[str | None]:
    """A nested MLflow run named ``name`` when a parent run is active; yields its id (or None).
    It carries ``tags`` and the parent's :data:`INHERITED_TAGS`."""
    if not enabled or not active():
        yield None
        return
    mlflow = _mlflow()
    parent_tags = mlflow.get_run(mlflow.active_run().info.run_id).data.tags
    inherited = {key: parent_tags[key] for key in INHERITED_TAGS if key in parent_tags}
    with mlflow.start_run(run_name=name, nested=True, tags={**inherited, **dict(tags or {})}) as run:
        if params:
            flat = {safe_metric_name(k): (str(v)[:MAX_PARAM_LENGTH]) for k, v in flatten(params).items()}
            mlflow.log_params(flat)
        yield run.info.run_id


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log finite metrics to the active run (no-op without one)."""
    if not active():
        return
    import math

    clean = {safe_metric_name(k): float(v) for k, v in metrics.items()
             if v is not None and math.isfinite(float(v))}
    if clean:
        _mlflow().log_metrics(clean, step=step)


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    """Log a JSON artifact to the active run (no-op without one)."""
    if active():
        _mlflow().log_dict(dict(data), artifact_file)
