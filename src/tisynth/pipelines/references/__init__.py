"""``references``: the Ref pool, the mask↔Ref synthesis plan, a Ref augmentation preview."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
