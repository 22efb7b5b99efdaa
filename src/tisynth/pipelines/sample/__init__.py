"""``sample``: a trained generator + the synthesis plan -> synthetic images and their manifest."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
