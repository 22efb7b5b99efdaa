"""The TISynth generator: mask + Ref + text conditioned latent diffusion on diffusers.

Public API (thin Kedro nodes call these):

* :func:`build_generator` (config dict + class registry -> :class:`TISynthGenerator`),
  :meth:`TISynthGenerator.save_pretrained` / :meth:`TISynthGenerator.from_pretrained`;
* :func:`train_generator` (stage ``A``, ``B`` or ``base``; checkpoints, resume, callback);
* :func:`sample_images` (DDIM + classifier-free guidance, seeded per item);
* :class:`RefAugment`, :class:`TileDataset`, :func:`encode_control`;
* :func:`mask_use` (does a trained model use its masks? loss with true vs other masks);
* autoencoders: :func:`build_autoencoder`, :func:`load_autoencoder`.
"""

from tisynth.generator.augment import RefAugment
from tisynth.generator.autoencoders import (
    LatentAutoencoder,
    SpaceToDepthAutoencoder,
    TAEF2Autoencoder,
    build_autoencoder,
    load_autoencoder,
)
from tisynth.generator.callbacks import MlflowCallback
from tisynth.generator.config import PRESETS, resolve_generator_config
from tisynth.generator.control import control_channels, encode_control
from tisynth.generator.data import TileDataset, collate_items
from tisynth.generator.diagnostics import mask_use
from tisynth.generator.model import TISynthGenerator, build_generator
from tisynth.generator.sample import SampleConfig, sample_images, sample_latents
from tisynth.generator.train import TrainConfig, TrainResult, latest_checkpoint, train_generator

__all__ = [
    "PRESETS",
    "LatentAutoencoder",
    "MlflowCallback",
    "RefAugment",
    "SampleConfig",
    "SpaceToDepthAutoencoder",
    "TAEF2Autoencoder",
    "TISynthGenerator",
    "TileDataset",
    "TrainConfig",
    "TrainResult",
    "build_autoencoder",
    "build_generator",
    "collate_items",
    "control_channels",
    "encode_control",
    "latest_checkpoint",
    "load_autoencoder",
    "mask_use",
    "resolve_generator_config",
    "sample_images",
    "sample_latents",
    "train_generator",
]
