"""The paper's path end to end on CPU: `kedro run --env=sd15` (ingest → references → train_generator
→ sample → filter) on the tiny SD 1.5-layout fixture, with what METHOD §2.6/§9 says about which
weights each stage trains checked by comparing the weights before and after.

Only the sizes are cut (64 px tiles, a few steps per stage, two sampler steps, a few segmenter
iterations, fp32 on CPU); every other setting is the sd15 environment's: the mask ControlNet in
stage A with the SD base frozen, stage B with the Ref ControlNet and AIA (the mask reaching the
UNet only through AIA, the mask ControlNet frozen), guidance 9 with leading DDIM spacing, the
paper's PSPNet segmenter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_kedro
from tests.generator.sd15_fixture import write_sd15_fixture
from tisynth.generator import TISynthGenerator, build_generator
from tisynth.ingest.demo_scenes import DEMO_CLASSES, DemoSceneConfig, write_demo_dataset

pytestmark = pytest.mark.slow  # 2-4 minutes on 2 CPU cores, most of it Kedro, MLflow and mmengine overhead
DEVICE_ENV = "TISYNTH_CHAIN_DEVICE"  # "cuda": the same chain on a GPU (benchmarks/gpu_check.sh)


def chain_params(dataset: Path, sd15: Path) -> dict:
    on_gpu = os.environ.get(DEVICE_ENV, "cpu") == "cuda"
    return {
        "dataset": {"root": str(dataset), "images": "scenes", "masks": "labels"},
        "ingest": {"tile_size": 64, "workers": 1},
        "generator": {"pretrained": str(sd15), "image_size": 64},
        "references": {"seeds_per_pair": 1, "masks": {"limit": 4}},
        "train_generator": {
            "common": {"batch_size": 2, "mixed_precision": "bf16" if on_gpu else "no", "checkpoint_every": 2,
                       "log_every": 1, "sample_every": 0, "progress": False, "cpu": not on_gpu},
            "A": {"steps": 3, "learning_rate": 1.0e-3},
            "B": {"steps": 3, "learning_rate": 1.0e-3},
            "report": {"tiles": 2, "sample": {"steps": 2}, "mask_use": {"tiles": 2, "timesteps": [500]}},
        },
        "sample": {"sampler": {"steps": 2, "batch_size": 4, "device": "cuda" if on_gpu else "cpu"}, "chunk": 4,
                   "quality": {"images": 0}},
        "segmenter": {
            "data": {"crop_size": 64},
            "train": {"iterations": 2, "val_interval": 2, "checkpoint_interval": 2, "log_interval": 1, "batch_size": 2,
                      "val_batch_size": 2, "num_workers": 0, "device": "cuda" if on_gpu else "cpu", "num_threads": 1},
        },
        "read_generator": {"tiles": 2, "stride": 1, "guidance": [9.0]},
    }


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ (or exist on one side only)."""
    return sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not torch.equal(a[k], b[k]))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("sd15_chain")
    sd15 = write_sd15_fixture(base / "stable-diffusion-v1-5")
    dataset = base / "dataset"
    write_demo_dataset(dataset, DemoSceneConfig(n_scenes=3, size=128, seed=5), DEMO_CLASSES)
    from tests.conftest import make_project

    project = make_project(base / "project")
    params = chain_params(dataset, sd15)
    cwd = os.getcwd()
    os.chdir(project)
    try:
        run_kedro(project, ["synthesize"], env="sd15", params=params)
    finally:
        os.chdir(cwd)
    return {"project": project, "sd15": sd15, "params": params}


def test_stage_a_trains_the_mask_controlnet_only(chain):
    data = chain["project"] / "data"
    stage_a = TISynthGenerator.from_pretrained(data / "06_models/generator_stage_a")
    sd15 = chain["sd15"]
    # the SD base (UNet, VAE, text encoder) is bit for bit the pretrained one
    assert _same(_weights(stage_a.unet), load_file(str(sd15 / "unet/diffusion_pytorch_model.safetensors"))) == []
    assert _same(_weights(stage_a.autoencoder.vae), load_file(str(sd15 / "vae/diffusion_pytorch_model.safetensors"))) == []
    text = {k.removeprefix("text_model."): v for k, v in load_file(str(sd15 / "text_encoder/model.safetensors")).items()}
    assert _same({k.removeprefix("text_model."): v for k, v in _weights(stage_a.text_encoder).items()}, text) == []
    # the mask ControlNet moved away from its initialisation (a copy of the UNet's encoder and
    # zero output convs); Ref ControlNet and AIA are untouched by stage A
    init = build_generator({"preset": "sd15", **chain["params"]["generator"]}, stage_a.registry, seed=0)
    changed = _same(_weights(init.mask_controlnet), _weights(stage_a.mask_controlnet))
    assert any(k.startswith("controlnet_down_blocks.") for k in changed) and any(k.startswith("down_blocks.") for k in changed)
    assert all(stage_a.mask_controlnet.controlnet_down_blocks[i].weight.abs().sum() > 0 for i in range(12))
    assert _same(_weights(init.ref_controlnet), _weights(stage_a.ref_controlnet)) == []
    assert _same(_weights(init.aia), _weights(stage_a.aia)) == []


def test_stage_b_trains_the_ref_controlnet_and_aia_with_the_rest_frozen(chain):
    data = chain["project"] / "data"
    stage_a = TISynthGenerator.from_pretrained(data / "06_models/generator_stage_a")
    final = TISynthGenerator.from_pretrained(data / "06_models/generator")
    assert final.config["mask_conditioning"] == "controlnet" and final.config["mask_residual"] is False
    assert final.config["preset"] == "sd15" and final.prediction_type == "epsilon"
    for part in ("unet", "autoencoder", "text_encoder", "mask_controlnet"):  # frozen in stage B
        assert _same(_weights(getattr(stage_a, part)), _weights(getattr(final, part))) == [], part
    ref_changed = _same(_weights(stage_a.ref_controlnet), _weights(final.ref_controlnet))
    assert any(k.startswith("controlnet_cond_embedding.") for k in ref_changed)
    assert any(k.startswith("down_blocks.") for k in ref_changed)
    for site in final.sites:
        if site.block != "up":
            continue
        layer, before = final.aia[site.name], stage_a.aia[site.name]
        # to_out starts at zero: only gradient steps can make it non-zero
        assert layer.ref_attn.to_out[0].weight.abs().sum() > 0 and layer.mask_attn.to_out[0].weight.abs().sum() > 0, site.name
        assert not torch.equal(layer.ref_attn.to_k.weight, before.ref_attn.to_k.weight), site.name
        assert not torch.equal(layer.mask_attn.to_k.weight, before.mask_attn.to_k.weight), site.name


def test_sampling_and_filtering_follow_the_papers_settings(chain):
    data = chain["project"] / "data"
    images = data / "07_model_output/synthetic"
    fingerprint = json.loads((images / "run.json").read_text())["fingerprint"]
    sampler = fingerprint["sampler"]
    assert (sampler["steps"], sampler["guidance_scale"], sampler["timestep_spacing"], sampler["uncond"]) == (2, 9.0, "leading", "prompt")
    plan = pd.read_parquet(sorted((data / "04_feature/synthesis_plan.parquet").rglob("*.parquet"))[-1])
    manifest = pd.read_parquet(sorted((data / "07_model_output/synthetic_manifest.parquet").rglob("*.parquet"))[-1])
    assert 0 < len(plan) <= 4 and sorted(manifest["name"]) == sorted(plan["name"])  # each planned image, once
    assert sorted(p.name for p in (images / "images").iterdir()) == sorted(f"{n}.png" for n in plan["name"])
    filtered = pd.read_parquet(data / "07_model_output/filtered_manifest.parquet")
    assert set(filtered["name"]) == set(manifest["name"])
    history = pd.read_csv(data / "08_reporting/generator_history.csv")
    assert set(history["stage"]) == {"A", "B"} and history["loss"].notna().all()
