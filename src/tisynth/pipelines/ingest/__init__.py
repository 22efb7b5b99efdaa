"""``ingest``: raw dataset -> class registry, fixed-size tiles, manifest, TISynth JSONL."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
