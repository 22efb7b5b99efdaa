"""``synthesize``: ingest → references → train_generator → sample → filter, the whole way from a
labelled dataset to a filtered synthetic dataset."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
