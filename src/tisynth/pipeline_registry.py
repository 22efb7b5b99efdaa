"""Project pipelines: one folder per pipeline under ``tisynth/pipelines``, found automatically.

``synthesize`` (ingest → references → train_generator → sample → filter) is a pipeline package
composing the stages; ``__default__`` is every stage once (synthesize + segment).
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

COMPOSITES = ("synthesize",)


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum((p for n, p in pipelines.items() if n not in COMPOSITES), Pipeline([]))
    return pipelines
