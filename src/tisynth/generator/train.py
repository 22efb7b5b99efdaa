"""Training of the generator's stages with Hugging Face accelerate.

Stages (``stage`` in the training config; METHOD §2.6–2.8, §9):

* ``A``: the mask ControlNet alone, injected residually like a standard ControlNet; the base
  (UNet, autoencoder, text encoder) is frozen.
* ``B``: TISynth proper: the mask ControlNet is frozen, the Ref ControlNet (the part whose outputs
  AIA consumes) and every AIA layer (the middle one included unless ``train_mid_aia`` is off)
  train. Ref = :class:`~tisynth.generator.augment.RefAugment` (target), drawn on the fly.
* ``base``: the UNet alone on (image, prompt), the stand-in for Stable Diffusion's pre-training
  when no pretrained base exists (random-weight presets).

Objective: ε-prediction MSE (v-prediction when the scheduler config says so), t ~ U{0..T-1} (or
a fixed subset, ``timesteps``). AdamW over the trainable parameters only.

Reproducibility and resumption: every random draw of an optimizer step (item order, flips, Ref
augmentation, noise, timesteps, posterior samples) comes from generators seeded with
``(seed, step, micro-batch, process)``. A checkpoint (every ``checkpoint_every`` steps, written
to a temporary folder and renamed into place) holds the trainable weights, optimizer and LR
scheduler states, the grad scaler, each process's RNG states, the step and the loss history. A
rerun with the same ``checkpoint_dir`` resumes from the latest complete checkpoint and, on CPU,
reproduces the loss sequence of an uninterrupted run exactly. Use one ``checkpoint_dir`` per
stage.

Multi-GPU: run the calling script under ``accelerate launch --num_processes N script.py``; each
process then takes its own slice of every global batch (effective batch = ``batch_size`` ×
``gradient_accumulation_steps`` × N), gradients are all-reduced by DDP, and the main process
writes checkpoints. In-process on one device is the default.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from tisynth.errors import TisynthError
from tisynth.generator.augment import RefAugment
from tisynth.generator.data import TileDataset, collate_items, images_to_uint8
from tisynth.generator.model import STAGES, TISynthGenerator
from tisynth.generator.sample import SampleConfig, sample_grid, sample_images
from tisynth.io import write_json_atomic
from tisynth.params import dataclass_from_mapping
from tisynth.weights import read_safetensors, read_torch

Callback = Callable[[dict[str, Any]], None]
STAGE_MODES = {"base": "base", "A": "controlnet", "B": "tisynth"}
STAGE_CONTROLNETS = {"A": "mask", "B": "ref"}  # the ControlNet each stage trains
CHECKPOINT_PREFIX = "step-"

__all__ = ["TileDataset", "TrainConfig", "TrainResult", "train_generator", "latest_checkpoint"]


class TrainingError(TisynthError, ValueError):
    """Training settings, data or checkpoints that cannot be used."""


@dataclass
class TrainConfig:
    """Training parameters (all config; defaults follow METHOD §2.8 where it gives one).

    Attributes:
        stage: "A" (mask ControlNet), "B" (Ref ControlNet + AIA) or "base" (UNet).
        steps: optimizer steps in total (a resumed run continues up to this number).
        batch_size: items per process and micro-batch.
        gradient_accumulation_steps: micro-batches per optimizer step.
        learning_rate, adam_beta1, adam_beta2, adam_epsilon, weight_decay: AdamW (torch defaults
            for betas/eps and wd 0.01, as the authors).
        lr_scheduler: a diffusers scheduler name ("constant", "constant_with_warmup", "cosine", …).
        lr_warmup_steps: warm-up steps (0).
        max_grad_norm: clip the gradient norm (None = no clipping, as the authors).
        mixed_precision: "no" | "bf16" | "fp16" (autocast; trainable weights stay fp32).
        gradient_checkpointing: trade compute for memory in the UNet and ControlNets.
        seed: seed of all random draws.
        hflip: probability of a joint horizontal flip of image and mask (0.5 as the authors).
        ref_augment: :class:`RefAugment` parameters (stage B).
        timesteps: restrict t to these values (None = all ``num_train_timesteps``).
        checkpoint_every: write a checkpoint every N steps (0 = only at the end).
        checkpoints_keep: how many checkpoints to keep (the newest).
        resume: resume from the latest checkpoint in ``checkpoint_dir`` if there is one.
        log_every: call the callback with metrics every N steps.
        sample_every: call the callback with a sample grid every N steps (0 = never).
        sample_items: rows of the sample grid (the first items of the dataset).
        sample: :class:`~tisynth.generator.sample.SampleConfig` fields for the grids.
        num_workers: DataLoader workers.
        progress: show a tqdm bar.
        cpu: force CPU even when an accelerator is available.
        find_unused_parameters: DDP option (not needed: only used parameters train).
        train_unet_decoder: stages A and B: also train the UNet's middle block, decoder and output
            layers (the authors' earlier "ftdecoder" variant; off by default, as in TISynth).
        condition_dropout: probability per item of dropping the mask and the prompt together
            (empty prompt, all-zero mask map), which classifier-free guidance on them needs
            (mask-first models; for others only the prompt is dropped).
        ref_dropout: stage B: probability per item of an all-zero Ref latent (Ref guidance, and
            a model that does not depend on having a Ref).
        ref_crop: with cached latents, the training Ref is another dihedral variant of the
            target's latent, cropped to a random square of this fraction range of the side and
            resized back: it carries the target's colours and textures but not its layout.
        ema_decay: keep an exponential moving average of the trained weights (decay per step,
            warmed up as ``min(decay, (1 + n) / (10 + n))``) and put it into the model when the
            stage ends; ``None``: no EMA.
        controlnet_from_unet: stages A and B: first copy the UNet's current encoder into the
            stage's ControlNet (mask for A, Ref for B), so that it steers the base as trained,
            not the random UNet it was copied from at build time (only the tensors the stage
            trains are copied). No effect on a pretrained, untouched base; a resumed run then
            loads its checkpoint over the copy.
    """

    stage: str = "B"
    steps: int = 1000
    batch_size: int = 2
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float | None = None
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    hflip: float = 0.5
    ref_augment: dict[str, Any] = field(default_factory=dict)
    timesteps: list[int] | None = None
    checkpoint_every: int = 500
    checkpoints_keep: int = 2
    resume: bool = True
    log_every: int = 10
    sample_every: int = 0
    sample_items: int = 4
    sample: dict[str, Any] = field(default_factory=lambda: {"steps": 20})
    num_workers: int = 0
    progress: bool = True
    cpu: bool = False
    find_unused_parameters: bool = False
    train_unet_decoder: bool = False
    condition_dropout: float = 0.0
    ref_dropout: float = 0.0
    ref_crop: tuple[float, float] = (0.5, 0.9)
    ema_decay: float | None = None
    controlnet_from_unet: bool = True

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | TrainConfig | None) -> TrainConfig:
        if isinstance(config, TrainConfig):
            return config
        cfg = dataclass_from_mapping(cls, config, TrainingError, "unknown training key(s)")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise TrainingError(f"stage must be one of {STAGES}, got {self.stage!r}")
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "checkpoints_keep", "log_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise TrainingError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if not 0 <= self.hflip <= 1:
            raise TrainingError(f"hflip probability must be in [0, 1], got {self.hflip}")
        if self.train_unet_decoder and self.stage == "base":
            raise TrainingError("train_unet_decoder applies to stages A and B (base trains the whole UNet)")
        for name in ("condition_dropout", "ref_dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise TrainingError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        lo, hi = (float(v) for v in self.ref_crop)
        if not 0 < lo <= hi <= 1:
            raise TrainingError(f"ref_crop must be two fractions 0 < low <= high <= 1, got {list(self.ref_crop)}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise TrainingError(f"ema_decay must be in (0, 1) or null, got {self.ema_decay}")
        if self.learning_rate <= 0:
            raise TrainingError(f"learning_rate must be positive, got {self.learning_rate}")
        RefAugment(**self.ref_augment)
        SampleConfig.from_dict(self.sample)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainResult(NamedTuple):
    """What :func:`train_generator` returns (unpacks as ``model, history``)."""

    model: TISynthGenerator
    history: list[dict[str, Any]]


# ---------------------------------------------------------------------- data order
def _derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


class _Plan:
    """Deterministic item order: epoch e visits ``randperm(n, seed(e))``; positions run on across epochs."""

    def __init__(self, n: int, batch: int, accum: int, world: int, seed: int):
        self.n, self.batch, self.accum, self.world, self.seed = n, batch, accum, world, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            g = torch.Generator().manual_seed(_derive_seed(self.seed, 0xDA7A, epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, step: int, micro: int, rank: int) -> list[int]:
        start = ((step * self.accum + micro) * self.world + rank) * self.batch
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(start, start + self.batch)]


class _PlanSampler(Sampler[list[int]]):
    def __init__(self, plan: _Plan, start: int, stop: int, rank: int):
        self.plan, self.start, self.stop, self.rank = plan, start, stop, rank

    def __iter__(self):  # type: ignore[no-untyped-def]
        for step in range(self.start, self.stop):
            for micro in range(self.plan.accum):
                yield self.plan.indices(step, micro, self.rank)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.plan.accum


# ---------------------------------------------------------------------- the loss
class _StageModule(nn.Module):
    """Noisy latents -> prediction -> MSE; the unit accelerate/DDP wraps."""

    def __init__(self, model: TISynthGenerator, mode: str, reference_path: bool = False):
        super().__init__()
        self.model = model
        self.mode = mode
        self.reference_path = reference_path
        self.noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)

    def forward(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        control: torch.Tensor | None,
        ref_latents: torch.Tensor | None,
        cond_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.model.prediction_type == "epsilon":
            target = noise
        elif self.model.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise TrainingError(f"prediction_type {self.model.prediction_type!r} is not supported for training")
        pred = self.model.predict_noise(noisy, timesteps, text, control, ref_latents, mode=self.mode,
                                        reference_path=self.reference_path, cond_keep=cond_keep)
        return F.mse_loss(pred.float(), target.float())


def _prepare_inputs(
    model: TISynthGenerator,
    batch: Mapping[str, Any],
    cfg: TrainConfig,
    augment: RefAugment,
    gen: torch.Generator,
    device: torch.device,
    num_train_timesteps: int,
) -> dict[str, Any]:
    masks = batch["masks"]
    b = masks.shape[0]
    cached = "latents" in batch
    images = None
    if not cached:
        images = batch["images"]
        flip = torch.rand(b, generator=gen) < cfg.hflip
        if bool(flip.any()):
            images, masks = images.clone(), masks.clone()
            images[flip] = images[flip].flip(-1)
            masks[flip] = masks[flip].flip(-1)
        images = images.to(device)
    keep = torch.rand(b, generator=gen) >= cfg.condition_dropout
    ref_keep = torch.rand(b, generator=gen) >= cfg.ref_dropout
    mask_free = "cond_keep" in batch and not bool(batch["cond_keep"].all())
    if "cond_keep" in batch:  # mask-free items (a target domain's tiles) never condition on a mask or prompt
        keep = keep & batch["cond_keep"].bool()
    prompts = [p if k else "" for p, k in zip(batch["prompts"], keep.tolist())]
    with torch.no_grad():
        latents = batch["latents"].to(device) if cached else model.encode_images(images, generator=gen)
        text = model.encode_prompts(prompts)
        wants_mask = cfg.stage != "base" or model.mask_first
        control = model.encode_control(masks.to(device)) if wants_mask else None
        ref_latents = None
        if cfg.stage == "B" or (cfg.stage == "base" and model.style_first):
            if "ref_latents" in batch:  # the item names its Ref (another tile): crop it like any Ref
                own = batch["ref_latents"][:, None]
                ref_latents = latent_ref(own, torch.zeros(b, dtype=torch.long), cfg.ref_crop, gen).to(device)
            elif cached:
                ref_latents = latent_ref(batch["variants"], batch["variant_index"], cfg.ref_crop, gen).to(device)
            else:
                ref_latents = model.encode_images(augment(images, generator=gen), generator=gen)
            if cfg.ref_dropout > 0:
                ref_latents = ref_latents * ref_keep.to(device).view(-1, 1, 1, 1).to(ref_latents.dtype)
    noise = torch.randn(latents.shape, generator=gen).to(device)
    if cfg.timesteps:
        choices = torch.tensor(cfg.timesteps, dtype=torch.long)
        if choices.min() < 0 or choices.max() >= num_train_timesteps:
            raise TrainingError(f"timesteps must lie in 0..{num_train_timesteps - 1}")
        t = choices[torch.randint(len(choices), (b,), generator=gen)]
    else:
        t = torch.randint(0, num_train_timesteps, (b,), generator=gen)
    return {
        "latents": latents,
        "noise": noise,
        "timesteps": t.to(device),
        "text": text,
        "control": control,
        "ref_latents": ref_latents,
        "cond_keep": keep.to(device) if (model.mask_first and (cfg.condition_dropout > 0 or mask_free)) else None,
    }


def latent_ref(variants: torch.Tensor, current: torch.Tensor, crop: Sequence[float], gen: torch.Generator) -> torch.Tensor:
    """A training Ref from cached latents: another dihedral variant of the target, randomly cropped.

    ``variants``: ``B×V×C×h×w`` (every dihedral variant of each target), ``current``: the
    variant index of each target. The Ref is a different variant (another orientation), cropped
    to a random square of ``crop`` (fractions of the side) at a random place and resized back:
    the target's colours and textures, not its layout.
    """
    b, v, _, h, w = variants.shape  # with one variant, the Ref is a crop of the target itself
    out = []
    for i in range(b):
        j = int(torch.randint(v - 1, (1,), generator=gen)) if v > 1 else 0
        j = j + 1 if v > 1 and j >= int(current[i]) else j
        lat = variants[i, j].float()
        frac = float(crop[0]) + (float(crop[1]) - float(crop[0])) * float(torch.rand(1, generator=gen))
        ch, cw = max(1, round(h * frac)), max(1, round(w * frac))
        y = int(torch.randint(h - ch + 1, (1,), generator=gen))
        x = int(torch.randint(w - cw + 1, (1,), generator=gen))
        patch = lat[None, :, y : y + ch, x : x + cw]
        out.append(F.interpolate(patch, size=(h, w), mode="bilinear", align_corners=False)[0] if (ch, cw) != (h, w) else patch[0])
    return torch.stack(out)


class EmaWeights:
    """Exponential moving average of named parameters (kept in fp32 on their device)."""

    def __init__(self, params: Mapping[str, torch.Tensor], decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {n: p.detach().float().clone() for n, p in params.items()}

    def rate(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, params: Mapping[str, torch.Tensor]) -> None:
        d = self.rate()
        for n, p in params.items():
            self.shadow[n].mul_(d).add_(p.detach().float(), alpha=1 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, params: Mapping[str, torch.Tensor]) -> None:
        for n, p in params.items():
            p.copy_(self.shadow[n].to(p.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{n: t.cpu().contiguous() for n, t in self.shadow.items()}, "__updates__": torch.tensor(self.updates)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.updates = int(state["__updates__"])
        for n in self.shadow:
            self.shadow[n].copy_(state[n].to(self.shadow[n].device))


# ---------------------------------------------------------------------- checkpoints
def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder in ``checkpoint_dir`` (or None)."""
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return None
    done = sorted(p for p in d.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and (p / "state.json").is_file())
    return done[-1] if done else None


def _save_checkpoint(
    accelerator: Accelerator,
    checkpoint_dir: Path,
    step: int,
    model: TISynthGenerator,
    names: Sequence[str],
    optimizer: Any,
    lr_scheduler: Any,
    history: list[dict[str, Any]],
    cfg: TrainConfig,
    ema: EmaWeights | None = None,
) -> Path:
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = checkpoint_dir / f".tmp-{CHECKPOINT_PREFIX}{step:08d}"
    if accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.stack([s for s in torch.cuda.get_rng_state_all()]) if torch.cuda.device_count() else torch.empty(0)
    torch.save(rng, tmp / f"rng_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        params = dict(model.named_parameters())
        save_file({n: params[n].detach().float().cpu().contiguous() for n in names}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if ema is not None:
            save_file(ema.state_dict(), str(tmp / "ema.safetensors"))
        torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        write_json_atomic(
            tmp / "state.json",
            {
                "step": step,
                "stage": cfg.stage,
                "seed": cfg.seed,
                "num_processes": accelerator.num_processes,
                "trainable": list(names),
                "history": history,
                "config": cfg.to_dict(),
            },
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        old = sorted(p for p in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())
        for p in old[: -cfg.checkpoints_keep]:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _load_checkpoint(
    accelerator: Accelerator,
    path: Path,
    model: TISynthGenerator,
    names: Sequence[str],
    optimizer: Any,
    lr_scheduler: Any,
    cfg: TrainConfig,
    ema: EmaWeights | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if state["stage"] != cfg.stage:
        raise TrainingError(f"checkpoint {path} is from stage {state['stage']}, this run trains stage {cfg.stage}; use one checkpoint_dir per stage")
    if list(state["trainable"]) != list(names):
        raise TrainingError(f"checkpoint {path} trained other parameters than this model's stage {cfg.stage}; was the model config changed?")
    saved = state.get("config", {})
    for key, now in (
        ("seed", cfg.seed),
        ("batch_size", cfg.batch_size),
        ("gradient_accumulation_steps", cfg.gradient_accumulation_steps),
    ):
        if saved.get(key, now) != now:
            raise TrainingError(f"checkpoint {path} was written with {key}={saved[key]}, this run has {now}; the data order would differ")
    if state.get("num_processes", accelerator.num_processes) != accelerator.num_processes:
        raise TrainingError(
            f"checkpoint {path} was written by {state['num_processes']} processes, this run has {accelerator.num_processes}"
        )
    weights = read_safetensors(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].copy_(weights[n].to(params[n].device, params[n].dtype))
    optimizer.load_state_dict(read_torch(path / "optimizer.pt"))
    if ema is not None:
        if not (path / "ema.safetensors").is_file():
            raise TrainingError(f"checkpoint {path} has no EMA weights but this run keeps an EMA (ema_decay); was ema_decay changed?")
        ema.load_state_dict(read_safetensors(path / "ema.safetensors"))
    lr_scheduler.load_state_dict(torch.load(path / "lr_scheduler.pt", map_location="cpu", weights_only=True))
    if accelerator.scaler is not None and (path / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(torch.load(path / "scaler.pt", map_location="cpu", weights_only=True))
    rng_file = path / f"rng_{accelerator.process_index}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, map_location="cpu", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and len(rng["cuda"]) and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(rng["cuda"]))
    return int(state["step"]), list(state["history"])


# ---------------------------------------------------------------------- accelerate
def _accelerator(cfg: TrainConfig) -> Accelerator:
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, cfg.mixed_precision):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise TrainingError(
                f"accelerate is already set up with mixed_precision={state.get('_mixed_precision')!r}; "
                "one distributed process can only train with one precision"
            )
        # one process, in-process use: a new precision for a new stage is fine
        AcceleratorState._reset_state()
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        cpu=cfg.cpu,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)],
    )


# ---------------------------------------------------------------------- main entry
def train_generator(
    model: TISynthGenerator,
    train_dataset: Sequence[Any],
    config: Mapping[str, Any] | TrainConfig | None,
    checkpoint_dir: str | Path,
    callback: Callback | None = None,
) -> TrainResult:
    """Train one stage of ``model`` in place; returns ``(model, history)``.

    Args:
        model: the generator (frozen parts stay untouched).
        train_dataset: a sequence of items (dicts with ``image`` uint8 H×W×3, ``mask`` uint8 H×W
            index space, ``prompt``), e.g. a :class:`TileDataset` or a list.
        config: :class:`TrainConfig` or a dict of its fields.
        checkpoint_dir: folder of this stage's checkpoints (resumed from when ``resume``).
        callback: called with event dicts: ``{"event": "step", "step", "loss", "lr",
            "effective_batch_size", "samples_per_second", "stage"}`` every ``log_every`` steps,
            ``{"event": "samples", "step", "grid", "stage"}`` (uint8 grid: mask | Ref | sample)
            every ``sample_every`` steps and ``{"event": "checkpoint", "step", "path"}``.

    Returns:
        :class:`TrainResult`; ``history`` holds ``{"step", "loss", "lr"}`` per optimizer step.
    """
    cfg = TrainConfig.from_dict(config)
    n = len(train_dataset)
    if n == 0:
        raise TrainingError("the training dataset is empty")
    first = collate_items([train_dataset[0]])
    if "latents" in first:  # a latent cache: its latents must be this autoencoder's
        if first["latents"].shape[1] != model.latent_channels:
            raise TrainingError(f"cached latents have {first['latents'].shape[1]} channels, the model's autoencoder {model.latent_channels}")
        model.check_image_size(int(first["masks"].shape[1]), int(first["masks"].shape[2]))
    else:
        model.check_image_size(int(first["images"].shape[2]), int(first["images"].shape[3]))
    checkpoint_dir = Path(checkpoint_dir)

    accelerator = _accelerator(cfg)
    device = accelerator.device
    names = model.set_trainable(cfg.stage, cfg.train_unet_decoder)
    if not names:
        raise TrainingError(f"stage {cfg.stage} has no trainable parameters in this model")
    which = [STAGE_CONTROLNETS[cfg.stage]] if cfg.stage in STAGE_CONTROLNETS else []
    if cfg.stage == "B" and model.mask_first:
        which.append("mask")  # no stage A: the mask ControlNet also starts here
    for net in which if cfg.controlnet_from_unet else []:
        prefix = f"{net}_controlnet."
        # only what this stage trains: parts it neither trains nor computes stay as they are
        model.controlnet_from_unet(net, only={n[len(prefix):] for n in names if n.startswith(prefix)})
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing(True)
    model.to(device)
    module = _StageModule(model, STAGE_MODES[cfg.stage])
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [params[nm] for nm in names],
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        weight_decay=cfg.weight_decay,
    )
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.steps)
    module, optimizer = accelerator.prepare(module, optimizer)
    ema = EmaWeights({nm: params[nm] for nm in names}, cfg.ema_decay) if cfg.ema_decay else None

    start, history = 0, []
    if cfg.resume:
        ckpt = latest_checkpoint(checkpoint_dir)
        if ckpt is not None:
            start, history = _load_checkpoint(accelerator, ckpt, model, names, optimizer, lr_scheduler, cfg, ema)
            history = history[:start]

    world, rank = accelerator.num_processes, accelerator.process_index
    accum = cfg.gradient_accumulation_steps
    effective_batch = cfg.batch_size * accum * world
    plan = _Plan(n, cfg.batch_size, accum, world, cfg.seed)
    loader = DataLoader(
        train_dataset,  # type: ignore[arg-type]
        batch_sampler=_PlanSampler(plan, start, cfg.steps, rank),
        collate_fn=collate_items,
        num_workers=cfg.num_workers,
    )
    augment = RefAugment(**cfg.ref_augment)
    num_t = int(model.scheduler_config["num_train_timesteps"])
    sample_cfg = SampleConfig.from_dict({**cfg.sample, "mode": STAGE_MODES[cfg.stage]})

    bar = tqdm(total=cfg.steps, initial=start, desc=f"stage {cfg.stage}", disable=not (cfg.progress and accelerator.is_main_process))
    batches = iter(loader)
    window_t, window_items = time.perf_counter(), 0
    try:
        for step in range(start, cfg.steps):
            total = torch.zeros((), device=device)
            for micro in range(accum):
                batch = next(batches)
                gen = torch.Generator().manual_seed(_derive_seed(cfg.seed, step, micro, rank))
                inputs = _prepare_inputs(model, batch, cfg, augment, gen, device, num_t)
                sync = accelerator.no_sync(module) if micro < accum - 1 else contextlib.nullcontext()
                with sync:
                    loss = module(**inputs)
                    accelerator.backward(loss / accum)
                total += loss.detach().float()
            if cfg.max_grad_norm is not None:
                accelerator.clip_grad_norm_([params[nm] for nm in names], cfg.max_grad_norm)
            optimizer.step()
            if ema is not None:
                ema.update({nm: params[nm] for nm in names})
            lr = float(lr_scheduler.get_last_lr()[0])
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            model.clear_features()
            loss_value = float(accelerator.reduce(total / accum, reduction="mean").item())
            history.append({"step": step + 1, "loss": loss_value, "lr": lr})
            window_items += effective_batch
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                elapsed = max(time.perf_counter() - window_t, 1e-9)
                rate = window_items / elapsed
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
                window_t, window_items = time.perf_counter(), 0
                if callback is not None and accelerator.is_main_process:
                    callback(
                        {
                            "event": "step",
                            "stage": cfg.stage,
                            "step": done,
                            "loss": loss_value,
                            "lr": lr,
                            "effective_batch_size": effective_batch,
                            "samples_per_second": rate,
                        }
                    )
            if cfg.sample_every and done % cfg.sample_every == 0 and callback is not None and accelerator.is_main_process:
                callback({"event": "samples", "stage": cfg.stage, "step": done, "grid": _sample_grid(model, train_dataset, cfg, sample_cfg)})
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps:
                path = _save_checkpoint(accelerator, checkpoint_dir, done, model, names, optimizer, lr_scheduler, history, cfg, ema)
                if callback is not None and accelerator.is_main_process:
                    callback({"event": "checkpoint", "stage": cfg.stage, "step": done, "path": str(path)})
        if ema is not None:  # the stage's result is the averaged model
            ema.copy_to({nm: params[nm] for nm in names})
    finally:
        bar.close()
        model.clear_features()
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing(False)
        model.requires_grad_(False)
        model.eval()
    accelerator.wait_for_everyone()
    return TrainResult(model, history)


def _sample_grid(model: TISynthGenerator, dataset: Sequence[Any], cfg: TrainConfig, sample_cfg: SampleConfig) -> np.ndarray:
    """Rows: colourised mask | Ref (the item's own image) | sample."""
    read = getattr(dataset, "image_item", None) or dataset.__getitem__
    k = min(cfg.sample_items, len(getattr(dataset, "tiles", dataset)))
    batch = collate_items([read(i) for i in range(k)])
    masks = batch["masks"].numpy()
    refs = images_to_uint8(batch["images"])
    samples = sample_images(model, masks, refs, batch["prompts"], list(range(k)), sample_cfg)
    colour = np.stack([model.registry.colorize(m) for m in masks])
    return sample_grid([colour, refs, samples])
