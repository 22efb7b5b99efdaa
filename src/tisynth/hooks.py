"""Project hooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl

_URI_KEYS = ("mlflow_tracking_uri", "mlflow_registry_uri")


def anchor_sqlite_uri(uri: str | None, project_path: Path) -> str | None:
    """``sqlite:///mlflow.db`` names a file relative to the working directory; anchor such a
    relative SQLite file at the project root so that every run of a project lands in its own
    store, whichever folder ``kedro`` is started from. Other URIs pass through unchanged."""
    prefix = "sqlite:///"
    if not isinstance(uri, str) or not uri.startswith(prefix):
        return uri
    path = uri[len(prefix):]
    if not path or path.startswith("/") or path == ":memory:":
        return uri
    return prefix + str((Path(project_path) / path).resolve())


class MlflowStoreHook:
    """Runs before kedro-mlflow reads ``mlflow.yml`` and rewrites relative SQLite stores."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: Any) -> None:
        loader = context.config_loader
        try:
            conf = loader["mlflow"]
        except (MissingConfigException, KeyError):  # no mlflow.yml: kedro-mlflow uses its defaults
            return
        server = dict(conf.get("server") or {})
        changed = {key: anchor_sqlite_uri(server.get(key), context.project_path) for key in _URI_KEYS
                   if server.get(key) is not None}
        if any(changed[key] != server[key] for key in changed):
            loader["mlflow"] = {**conf, "server": {**server, **changed}}


class ParameterCheckHook:
    """Checks every parameter block a run consumes before its first node (``tisynth.validation``)."""

    def __init__(self) -> None:
        self._conf_base: Path | None = None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        loader = context.config_loader
        self._conf_base = Path(loader.conf_source) / getattr(loader, "base_env", "base")

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        from tisynth.validation import blocks_of, load_defaults, validate_parameters

        if self._conf_base is None or not self._conf_base.is_dir():
            return
        params = catalog.load("parameters")
        validate_parameters(params, load_defaults(self._conf_base), blocks_of(pipeline.inputs()))


class MlflowRunLabelHook:
    """Names the run that kedro-mlflow opens after what ran and tags it (``tisynth.mlflow_runs``);
    runs after kedro-mlflow's own ``before_pipeline_run``, which opens the run."""

    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        from tisynth.mlflow_runs import label_active_run

        params = catalog.load("parameters") if "parameters" in catalog else {}
        label_active_run(run_params, params)
