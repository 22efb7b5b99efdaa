"""Two processes for real: `accelerate launch --multi_gpu --num_processes 2` with CPU training
(gloo) samples a plan in shards and trains stage B on the tiny SD 1.5-layout fixture.

* Sampling: the two shards together write every planned image exactly once, and each image is
  pixel-identical to a one-process run (sampler batch 1 in both, so that not even the float
  rounding of a different batch shape can differ).
* Training: the per-step losses (and the trained weights) of the two-process run equal those of
  one process that computes the same global batch: per step, the same items and the same random
  draws per process slice (the trainer draws from generators seeded by (seed, step, micro-batch,
  process)), gradients averaged, one AdamW step. Tolerance: relative 1e-5 on the losses. They
  agree to about 1e-6 and not to the bit: float32 kernels round differently for differently
  allocated copies of the same weights (two copies of one model in one process already differ by
  about 1e-6 relative). The trained weights are not compared: where a gradient is mathematically
  zero or tiny (a LayerNorm bias of a site fed by zero features, a zero-initialised conv in the
  first step) it is rounding noise, and Adam turns noise of either sign into steps of about the
  learning rate, so such tensors differ by that much between any two runs that round differently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.generator import two_process_worker as worker
from tests.generator.sd15_fixture import write_sd15_fixture

pytestmark = pytest.mark.slow  # real accelerate launches of two processes
from tisynth.io import read_image

STEPS, BATCH, WORLD = 3, 2, 2
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("two_processes")
    sd15 = write_sd15_fixture(root / "sd15")
    tiles = root / "tiles"
    plan = worker.write_tiles(tiles)
    plan_file = root / "plan.parquet"
    plan.to_parquet(plan_file)
    out = root / "two"
    out.mkdir()
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # `accelerate launch --cpu --num_processes 2` starts a single process unless MPI is set up
    # (accelerate 1.15's simple launcher); `--multi_gpu` starts two through torch.distributed.run,
    # and Accelerator(cpu=True) (the training config's `cpu`) joins them with gloo on the CPU
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", str(WORLD), "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "29561", str(Path(worker.__file__)),
           "--sd15", str(sd15), "--tiles", str(tiles), "--plan", str(plan_file), "--out", str(out),
           "--steps", str(STEPS), "--batch", str(BATCH)]
    done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return {"root": root, "sd15": sd15, "tiles": tiles, "plan": plan, "out": out, "log": done.stderr}


def test_sharded_sampling_writes_each_planned_image_once_as_one_process_would(runs):
    out, plan = runs["out"], runs["plan"]
    shards = [json.loads((out / f"sampled_{r}.json").read_text()) for r in range(WORLD)]
    assert sorted(s["rank"] for s in shards) == [0, 1] and {s["count"] for s in shards} == {WORLD}
    names = [n for s in shards for n in s["names"]]
    assert sorted(names) == sorted(plan["name"]) and len(set(names)) == len(names)  # a partition of the plan
    assert sum(s["made"] for s in shards) == len(plan)  # each image made exactly once
    files = sorted(p.name for p in (out / "synthetic" / "images").iterdir())
    assert files == sorted(f"{n}.png" for n in plan["name"])
    one = runs["root"] / "one"
    report = worker.sample(runs["sd15"], runs["tiles"], plan, one / "synthetic", env={})
    assert report["made"] == len(plan) and report["count"] == 1
    for name in plan["name"]:
        a = read_image(out / "synthetic" / "images" / f"{name}.png")
        b = read_image(one / "synthetic" / "images" / f"{name}.png")
        assert np.array_equal(a, b), name


def _one_process_reference(runs: dict) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One process, the same global batch: the slices of both processes, their draws, averaged gradients."""
    from tisynth.generator.augment import RefAugment
    from tisynth.generator.data import collate_items
    from tisynth.generator.train import TrainConfig, _derive_seed, _Plan, _prepare_inputs, _StageModule

    model = worker.build(runs["sd15"])
    data = worker.items(runs["tiles"], runs["plan"])
    cfg = TrainConfig.from_dict({**worker.TRAIN, "steps": STEPS, "batch_size": BATCH})
    names = model.set_trainable("B")
    model.controlnet_from_unet("ref", only={n.removeprefix("ref_controlnet.") for n in names if n.startswith("ref_controlnet.")})
    module = _StageModule(model, "tisynth")
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW([params[n] for n in names], lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                            eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    plan = _Plan(len(data), BATCH, 1, WORLD, cfg.seed)
    augment = RefAugment(**cfg.ref_augment)
    losses = []
    for step in range(STEPS):
        total = torch.zeros(())
        for rank in range(WORLD):
            batch = collate_items([data[i] for i in plan.indices(step, 0, rank)])
            gen = torch.Generator().manual_seed(_derive_seed(cfg.seed, step, 0, rank))
            loss = module(**_prepare_inputs(model, batch, cfg, augment, gen, torch.device("cpu"), 1000))
            (loss / WORLD).backward()
            total += loss.detach()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.clear_features()
        losses.append(float(total / WORLD))
    return losses, {n: params[n].detach().clone() for n in names}


def test_two_process_training_equals_one_process_on_the_same_global_batch(runs):
    history = json.loads((runs["out"] / "history.json").read_text())
    two = [h["loss"] for h in history]
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    one, weights = _one_process_reference(runs)
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=0)
    trained = load_file(str(runs["out"] / "trained.safetensors"))
    assert trained.keys() == weights.keys()  # the same parameters trained (weights themselves: see the module docstring)
    # the loss is not the same for every step nor for a single process's slice: the test has teeth
    assert len(set(two)) == STEPS
    assert pd.Series(two).notna().all()
