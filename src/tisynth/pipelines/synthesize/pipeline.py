"""The ``synthesize`` pipeline: the stages that turn labelled tiles into filtered synthetic data.

It is a package of its own (not only a sum in the registry) so that Kedro's selective pipeline
loading finds it by name: ``kedro run --pipeline=synthesize`` imports only this module.
"""

from kedro.pipeline import Pipeline

from tisynth.pipelines import filter as filter_pipeline
from tisynth.pipelines import ingest, read_generator, references, sample, train_generator

STAGES = (ingest, references, train_generator, sample, filter_pipeline, read_generator)


def create_pipeline(**kwargs) -> Pipeline:
    return sum((stage.create_pipeline() for stage in STAGES), Pipeline([]))
