"""Training callbacks: send :func:`~tisynth.generator.train.train_generator` events to MLflow."""

from __future__ import annotations

from typing import Any


class MlflowCallback:
    """Log training events to the active MLflow run (does nothing when no run is active).

    ``step`` events become metrics ``{prefix}loss``, ``{prefix}lr``,
    ``{prefix}effective_batch_size``, ``{prefix}samples_per_second`` at the optimizer step;
    ``samples`` events become images ``{prefix}samples/step_XXXXXXXX.png``.

    Args:
        prefix: metric/artifact name prefix, e.g. ``"generator_B/"``.
        log_images: also log sample grids.
    """

    def __init__(self, prefix: str = "generator/", log_images: bool = True):
        self.prefix = prefix
        self.log_images = log_images

    def __call__(self, event: dict[str, Any]) -> None:
        import mlflow

        if mlflow.active_run() is None:
            return
        kind, step = event.get("event"), int(event.get("step", 0))
        if kind == "step":
            keys = ("loss", "lr", "effective_batch_size", "samples_per_second")
            mlflow.log_metrics({f"{self.prefix}{k}": float(event[k]) for k in keys if k in event}, step=step)
        elif kind == "samples" and self.log_images:
            mlflow.log_image(event["grid"], f"{self.prefix}samples/step_{step:08d}.png")
