"""``train_generator``: base UNet (from scratch only), stage A (mask ControlNet), stage B (Ref
ControlNet + all-in-attention), with resumable checkpoints and MLflow curves."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
