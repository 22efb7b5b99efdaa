"""Does a trained generator use its mask? A loss-based check that needs no segmenter.

At high noise the latent is nearly gone and the model must predict the image from its
conditions; a model that follows masks predicts much better with the right mask than with
another tile's mask. :func:`mask_use` measures exactly that on a batch of labelled tiles: the
diffusion loss (the model's own objective, ε or v) with each tile's true mask *and prompt* and
with the mask and prompt of another tile, both with the same noise, timesteps and, in
``tisynth`` mode, a Ref that is another tile's image (so the Ref cannot carry the layout). Mask
and prompt are swapped together: the prompt names the classes of the tile, and a model that
takes the class from the prompt and ignores the mask would otherwise look as if it used it. ``mask_gain = 1 − loss_true /
loss_other``: 0 for a model that ignores the mask (a freshly built one exactly), towards 1 for
one whose prediction the mask determines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import DDPMScheduler
from torch.nn import functional as F

from tisynth.errors import TisynthError
from tisynth.generator.model import TISynthGenerator

DEFAULT_TIMESTEPS = (600, 800, 950)


class DiagnosticsError(TisynthError, ValueError):
    """Inputs a diagnostic cannot use."""


@torch.no_grad()
def mask_use(
    model: TISynthGenerator,
    batch: Mapping[str, Any],
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    mode: str = "tisynth",
    seed: int = 0,
) -> list[dict[str, float]]:
    """Loss with the true masks vs with other tiles' masks, per timestep.

    Args:
        model: the generator.
        batch: :func:`~tisynth.generator.data.collate_items` output (``images`` in [-1, 1],
            ``masks``, ``prompts``) of at least two tiles; the "other" mask of tile ``i`` is
            tile ``i − 1``'s, and so is its Ref in ``tisynth`` mode.
        timesteps: training timesteps to probe (high ones are where layout is decided).
        mode: ``tisynth`` (mask + Ref), ``controlnet`` (the stage-A model) or ``base`` (a
            mask-first base alone).
        seed: seed of the noise.

    Returns:
        one dict per timestep: ``t``, ``loss_true_mask``, ``loss_other_mask``, ``mask_gain``.
    """
    if mode not in ("tisynth", "controlnet", "base"):
        raise DiagnosticsError(f"mode must be 'tisynth', 'controlnet' or 'base', got {mode!r}")
    if mode == "base" and not model.mask_first:
        raise DiagnosticsError("mode 'base' uses masks only in a mask-first generator (mask_conditioning spade/concat)")
    masks = torch.as_tensor(batch["masks"])
    if len(masks) < 2:
        raise DiagnosticsError("mask_use needs at least two tiles (each is compared with another tile's mask)")
    other = masks.roll(1, 0)
    if bool((other == masks).all()):
        raise DiagnosticsError("every tile of the batch has the same mask; the check needs different masks")
    num_t = int(model.scheduler_config["num_train_timesteps"])
    bad = [t for t in timesteps if not 0 <= int(t) < num_t]
    if bad:
        raise DiagnosticsError(f"timesteps {bad} outside 0..{num_t - 1}")
    sched = DDPMScheduler.from_config(model.scheduler_config)
    latents = model.encode_images(batch["images"])
    prompts = list(batch["prompts"])
    text = {"true": model.encode_prompts(prompts), "other": model.encode_prompts(prompts[-1:] + prompts[:-1])}
    control = {"true": model.encode_control(masks), "other": model.encode_control(other)}
    refs = latents.roll(1, 0) if mode == "tisynth" else None
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(int(seed))).to(latents.device)
    rows = []
    for t in timesteps:
        tt = torch.full((len(latents),), int(t), device=latents.device)
        noisy = sched.add_noise(latents, noise, tt)
        target = sched.get_velocity(latents, noise, tt) if model.prediction_type == "v_prediction" else noise
        loss = {}
        for name, ctrl in control.items():
            pred = model.predict_noise(noisy, tt, text[name], ctrl, refs, mode=mode)
            loss[name] = float(F.mse_loss(pred.float(), target.float()))
        rows.append(
            {
                "t": float(t),
                "loss_true_mask": loss["true"],
                "loss_other_mask": loss["other"],
                "mask_gain": 1.0 - loss["true"] / loss["other"] if loss["other"] > 0 else 0.0,
            }
        )
    model.clear_features()
    return rows
