"""The ``segment`` pipeline: real-only vs real + synthetic segmentation, evaluated on test."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
