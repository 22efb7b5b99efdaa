"""Project pipelines: one folder per pipeline under ``tisynth/pipelines``, found automatically."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# `synthesize` chains the stages that turn labelled tiles into a filtered synthetic dataset.
SYNTHESIZE = ("ingest", "references", "train_generator", "sample", "filter")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    synthesize = [pipelines[name] for name in SYNTHESIZE if name in pipelines]
    if synthesize:
        pipelines["synthesize"] = sum(synthesize, Pipeline([]))
    pipelines["__default__"] = sum((p for n, p in pipelines.items() if n != "synthesize"), Pipeline([]))
    return pipelines
