"""``read_generator``: the real-only segmenter's reading of the generator's images."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
