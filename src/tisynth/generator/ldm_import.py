"""Import the authors' TISynth checkpoints (``GID_model.ckpt``) into a :class:`TISynthGenerator`.

The authors' checkpoint is one Lightning state dict in the original LDM layout (METHOD §2.2–2.5,
§2.9):

* ``model.diffusion_model.*``: the SD 1.5 UNet; inside it, the AIA layers of the middle block,
  ``middle_block.1.transformer_blocks.0.{norm00_trainable, attn00_ls_trainable, norm01_trainable,
  attn01_ssl_trainable}``, and of decoder transformer j = 3 … 11,
  ``output_blocks.{j}.1.transformer_blocks.0.{…}``, which is diffusers'
  ``up_blocks[j // 3].attentions[j % 3]`` (site ``up_{j//3}_{j%3}``). ``norm00``/``attn00`` are
  the Ref sub-layer (LN_a, A_ref), ``norm01``/``attn01`` the mask sub-layer (LN_b, A_mask);
* ``control_model.*``: the mask ControlNet (ldm ``cldm`` layout, hint = class_id/255 on three
  channels, i.e. ``control_encoding: authors``);
* ``ssl_stage_model.*``: the Ref ControlNet, same layout, hint = the Ref latent (4 channels),
  every hint conv of stride 1;
* ``first_stage_model.*`` (VAE), ``cond_stage_model.transformer.*`` (CLIP ViT-L/14 text model)
  and the noise-schedule buffers.

:func:`import_checkpoint` converts every part with diffusers' original-layout converters
(:mod:`tisynth.generator.ldm`), loads each strictly, accounts for every tensor of the file and
refuses, with the list, any key it cannot place, any weight the model lacks and any shape
mismatch. The result is a generator with ``control_encoding: authors`` and the middle AIA site
(which the authors' code builds but never trains, METHOD §2.6), saved with
:meth:`TISynthGenerator.save_pretrained`; its stored encoding is checked against the mask
ControlNet's three hint channels whenever it is loaded.

Command line (``python -m tisynth import-checkpoint --help``)::

    python -m tisynth import-checkpoint GID_model.ckpt data/06_models/generator \\
        --classes conf/classes/gid24.csv --tokenizer /models/stable-diffusion-v1-5/tokenizer
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tisynth.classes import ClassRegistry
from tisynth.generator.autoencoders import KLAutoencoder
from tisynth.generator.config import resolve_generator_config
from tisynth.generator.ldm import (
    SD15_ORIGINAL_CONFIG,
    KeyLedger,
    LdmError,
    check_schedule,
    controlnet_from_ldm,
    load_strict,
    load_tokenizer,
    read_checkpoint,
    read_original_config,
    refuse_unused,
    scheduler_config_from_ldm,
    text_encoder_from_ldm,
    unet_from_ldm,
    vae_from_ldm,
)
from tisynth.generator.model import TISynthGenerator

log = logging.getLogger(__name__)

MASK_PREFIX = "control_model."
REF_PREFIX = "ssl_stage_model."
AUTHORS_HINT_CHANNELS = 3
AIA_NAMES = {
    "norm00_trainable": "ref_norm",
    "attn00_ls_trainable": "ref_attn",
    "norm01_trainable": "mask_norm",
    "attn01_ssl_trainable": "mask_attn",
}
_AIA_KEY = re.compile(
    r"^model\.diffusion_model\.(?:(?P<mid>middle_block\.1)|output_blocks\.(?P<j>\d+)\.1)\.transformer_blocks\.0\."
    r"(?P<layer>norm00_trainable|attn00_ls_trainable|norm01_trainable|attn01_ssl_trainable)\.(?P<rest>.+)$"
)
REPORT_FILE = "import_report.json"


class CheckpointImportError(LdmError):
    """An authors' checkpoint that cannot be imported as it is."""


def split_aia(state: Mapping[str, torch.Tensor], layers_per_block: int, where: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(UNet entries without AIA, AIA entries renamed to the generator's "<site>.<layer>.<param>")``."""
    unet: dict[str, torch.Tensor] = {}
    aia: dict[str, torch.Tensor] = {}
    per_level = layers_per_block + 1
    for key, value in state.items():
        m = _AIA_KEY.match(key)
        if m is None:
            if key.startswith("model.diffusion_model."):
                unet[key] = value
            continue
        if m.group("mid"):
            site = "mid_0"
        else:
            j = int(m.group("j"))
            site = f"up_{j // per_level}_{j % per_level}"
        aia[f"{site}.{AIA_NAMES[m.group('layer')]}.{m.group('rest')}"] = value
    if not aia:
        raise CheckpointImportError(f"{where}: no AIA layers (model.diffusion_model.*.transformer_blocks.0.attn00_ls_trainable …); "
                                    "not a TISynth checkpoint")
    return unet, aia


def _authors_config(unet_cfg: Mapping[str, Any], image_size: int, heads: int, scheduler: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "attention_head_dim", "norm_num_groups")
    return resolve_generator_config({
        "preset": "sd15",
        "image_size": int(image_size),
        "control_encoding": "authors",
        "mask_conditioning": "controlnet",
        "mask_residual": False,
        "train_mid_aia": True,
        "aia_heads": int(heads),
        "unet": {k: (list(unet_cfg[k]) if isinstance(unet_cfg[k], (list, tuple)) else unet_cfg[k]) for k in keys},
        "scheduler": dict(scheduler),
    })  # fmt: skip


def import_checkpoint(
    checkpoint: str | Path,
    registry: ClassRegistry,
    out_dir: str | Path | None = None,
    original_config: str | Path | Mapping[str, Any] | None = None,
    tokenizer: str | Path | None = None,
    image_size: int = 512,
) -> TISynthGenerator:
    """Convert an authors' TISynth checkpoint into a generator (and save it into ``out_dir``).

    Args:
        checkpoint: ``GID_model.ckpt`` (read with ``weights_only=True``) or a ``.safetensors``
            copy of its state dict.
        registry: the classes the checkpoint was trained on (prompts name them; masks index them).
        out_dir: where to save the generator (``save_pretrained``) and ``import_report.json``.
        original_config: the LDM original config of the architecture (a YAML file or mapping);
            default ``<checkpoint>.yaml`` beside the file, else SD 1.5's.
        tokenizer: the CLIP tokenizer (folder or hub id); default CLIP ViT-L/14's, rebuilt offline.
        image_size: the generator's training resolution (512 for the authors' model).

    Raises:
        CheckpointImportError (an :class:`~tisynth.generator.ldm.LdmError`): an unmapped or
        missing key, a shape mismatch, a foreign or truncated file, another noise schedule.
    """
    path = Path(checkpoint)
    state = read_checkpoint(path)
    for prefix, what in (("model.diffusion_model.", "the UNet"), (MASK_PREFIX, "the mask ControlNet"),
                         (REF_PREFIX, "the Ref ControlNet"), ("first_stage_model.", "the VAE"),
                         ("cond_stage_model.", "the text encoder")):
        if not any(k.startswith(prefix) for k in state):
            tops = sorted({k.split(".")[0] for k in state})
            raise CheckpointImportError(f"{path}: no {prefix}* tensors ({what}); not a TISynth checkpoint "
                                        f"(its top-level names: {tops[:12]})")
    cfg = read_original_config(original_config, path, SD15_ORIGINAL_CONFIG)
    unet_params = cfg["model"]["params"]["unet_config"]["params"]
    ledger = KeyLedger(state)
    try:
        unet_state, aia_state = split_aia(state, int(unet_params["num_res_blocks"]), path)
        unet = unet_from_ldm(unet_state, cfg, ledger, path, sample_size=max(1, image_size // 8))
        vae = vae_from_ldm(state, cfg, ledger, path)
        tok = load_tokenizer(tokenizer)
        text_encoder = text_encoder_from_ldm(state, ledger, path, tok)
        if text_encoder.config.vocab_size != len(tok):
            raise CheckpointImportError(f"{path}: the text encoder has {text_encoder.config.vocab_size} token embeddings, "
                                        f"the tokenizer {len(tok)} tokens; give the tokenizer it was trained with")
        hint = state.get(f"{MASK_PREFIX}input_hint_block.0.weight")
        if hint is not None and hint.shape[1] != AUTHORS_HINT_CHANNELS:
            raise CheckpointImportError(f"{path}: the mask ControlNet takes {hint.shape[1]} hint channels; the authors' "
                                        f"encoding (class_id/255 repeated) has {AUTHORS_HINT_CHANNELS}")
        mask_cn = controlnet_from_ldm(state, MASK_PREFIX, unet, ledger, path, hint_stride=2)
        ref_cn = controlnet_from_ldm(state, REF_PREFIX, unet, ledger, path, hint_stride=1)
        scheduler = scheduler_config_from_ldm(cfg)
        check_schedule(state, scheduler, ledger, path)
        heads = int(unet_params.get("num_heads", unet.config.attention_head_dim))
        config = _authors_config(dict(unet.config), image_size, heads, scheduler)
        autoencoder = KLAutoencoder(vae, posterior="mode")
        model = TISynthGenerator(config, registry, unet, autoencoder, text_encoder, tok, scheduler, mask_cn, ref_cn)
        load_strict(model.aia, aia_state, "AIA layers (model.diffusion_model.*_trainable)", path)
        ledger.claim(aia_state.values())
        refuse_unused(ledger, path)
    except CheckpointImportError:
        raise
    except LdmError as exc:
        raise CheckpointImportError(str(exc)) from exc
    model.requires_grad_(False)
    model.eval()
    if out_dir is not None:
        out = Path(out_dir)
        model.save_pretrained(out)
        report = {
            "source": str(path),
            "source_bytes": path.stat().st_size,
            "tensors": len(state),
            "aia_sites": sorted({k.split(".")[0] for k in aia_state}),
            "control_encoding": model.control_encoding,
            "original_config": cfg["model"]["params"]["unet_config"]["params"],
            "classes": registry.names,
        }
        (out / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        log.info("imported %s (%d tensors, %d AIA sites) into %s", path, len(state), len(report["aia_sites"]), out)
    return model


# ---------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tisynth import-checkpoint CHECKPOINT OUT_DIR --classes TABLE [...]``."""
    p = argparse.ArgumentParser(
        prog="tisynth import-checkpoint",
        description="Import an authors' TISynth checkpoint (GID_model.ckpt, LDM layout) as a tisynth generator folder.",
    )
    p.add_argument("checkpoint", help="the authors' .ckpt (read with weights_only=True) or a .safetensors state dict")
    p.add_argument("out_dir", help="folder to write the generator into (e.g. data/06_models/generator)")
    p.add_argument("--classes", required=True, help="class table id,name,r,g,b[,ignore] of the training data (e.g. conf/classes/gid24.csv)")
    p.add_argument("--original-config", default=None, help="LDM original config YAML (default: <checkpoint>.yaml, else SD 1.5's)")
    p.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder or hub id (default: CLIP ViT-L/14's, built offline)")
    p.add_argument("--image-size", type=int, default=512, help="training resolution (512)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        registry = ClassRegistry.from_csv(args.classes)
        model = import_checkpoint(args.checkpoint, registry, args.out_dir, args.original_config, args.tokenizer, args.image_size)
    except (LdmError, ValueError, OSError) as exc:
        print(f"import-checkpoint: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in model.parameter_counts().items())
    print(f"imported {args.checkpoint} -> {args.out_dir} ({counts}; control_encoding {model.control_encoding})")
    return 0


__all__ = ["AIA_NAMES", "CheckpointImportError", "import_checkpoint", "main", "split_aia"]
