"""The ``filter`` pipeline: real-only segmenter, class-wise losses, FreeMask filtering, resampling."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
