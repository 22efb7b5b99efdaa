"""GPU check of the paper-scale generator: stage-B training and guided sampling, ours vs the
authors' execution, with throughput, peak memory and model FLOPs utilisation (MFU).

The timings come from :mod:`bench_generator` (each case in its own process, random weights, no
download): SD 1.5's architecture at 512² (or, with ``--tiny``, the same block structure with
tiny widths at 64², for a CPU dry run). FLOPs are counted once per case with
``torch.utils.flop_counter`` on the same model and inputs (matrix products and convolutions,
forward and backward); MFU = counted FLOPs per second / the device's dense bf16 peak
(``--peak-tflops``, or known for H100/H200/A100; none on CPU). The "reference" training runs in
fp32, as the authors do, so its MFU against the bf16 peak is a lower bound of what fp32 allows.

    python benchmarks/gpu_check.py --device cuda --out gpu_check.json
    python benchmarks/gpu_check.py --device cpu --tiny          # dry run, seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_generator  # noqa: E402

PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0}
"""Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by device-name fragment (first match)."""

TINY = {
    "image_size": 64,
    "unet": {"block_out_channels": [32, 32, 64, 64], "attention_head_dim": 8, "norm_num_groups": 32},
    "text_encoder": {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 1, "projection_dim": 64},
    "autoencoder": {"type": "kl", "config": {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1, "sample_size": 64}},
}
FULL = {"train_batch": 4, "train_steps": 10, "warmup": 3, "sample_batch": 8, "sample_steps": 20}
DRY = {"train_batch": 2, "train_steps": 1, "warmup": 1, "sample_batch": 2, "sample_steps": 2}


def peak_tflops(device: str, given: float | None) -> float | None:
    """The dense bf16 peak of ``device`` (``given`` wins); None when unknown (CPU)."""
    if given:
        return float(given)
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def count_flops(model: Any, case: str, device: str, sizes: dict[str, int]) -> float:
    """FLOPs of one training step (``train_*``) or of one whole sampling run (``sample_*``) of ``case``."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tisynth.generator import sample_images
    from tisynth.generator.augment import RefAugment
    from tisynth.generator.data import collate_items
    from tisynth.generator.train import TrainConfig, _prepare_inputs, _StageModule

    reg = model.registry
    size = int(model.config["image_size"])
    reference = case.endswith("reference")
    counter = FlopCounterMode(display=False)
    model.requires_grad_(False)
    if case.startswith("train"):
        model.set_trainable("B")
        if reference:
            for n, p in model.named_parameters():
                if n.startswith(("ref_controlnet.", "mask_controlnet.", "aia.")):
                    p.requires_grad_(True)
        module = _StageModule(model, "tisynth", reference_path=reference)
        batch = collate_items(bench_generator._batch(reg.num_classes, sizes["train_batch"], size))
        inputs = _prepare_inputs(model, batch, TrainConfig(stage="B", batch_size=sizes["train_batch"]), RefAugment(),
                                 torch.Generator().manual_seed(0), torch.device(device), 1000)
        with counter:
            module(**inputs).backward()
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)
    else:
        items = bench_generator._batch(reg.num_classes, sizes["sample_batch"], size, seed=1)
        cfg = {"steps": sizes["sample_steps"], "guidance_scale": 9.0, "batch_size": sizes["sample_batch"], "reference_path": reference}
        with counter:
            sample_images(model, np.stack([i["mask"] for i in items]), np.stack([i["image"] for i in items]),
                          [i["prompt"] for i in items], list(range(len(items))), cfg)
    return float(counter.get_total_flops())


def run(device: str, tiny: bool, peak: float | None, out: Path | None) -> dict[str, Any]:
    sizes = DRY if tiny else FULL
    overrides = TINY if tiny else {}
    if tiny and device == "cpu":
        import torch

        torch.set_num_threads(1)  # a dry run on a shared CPU
    with tempfile.TemporaryDirectory() as tmp:
        bench_json = Path(tmp) / "bench.json"
        argv = ["--preset", "sd15", "--device", device, "--batch", str(sizes["train_batch"]),
                "--train-steps", str(sizes["train_steps"]), "--warmup", str(sizes["warmup"]),
                "--sample-batch", str(sizes["sample_batch"]), "--sample-steps", str(sizes["sample_steps"]),
                "--gradient-checkpointing", "--json", str(bench_json)]
        if tiny:
            argv += ["--overrides", json.dumps(overrides), "--in-process", "--threads", "1"]
        if bench_generator.main(argv) != 0:
            raise SystemExit("bench_generator failed")
        results = json.loads(bench_json.read_text())["results"]
    peak_flops = peak_tflops(device, peak)
    from tisynth.generator import build_generator

    model = build_generator({"preset": "sd15", **overrides}, bench_generator._registry()).to(device)
    rows = []
    for r in results:
        flops = count_flops(model, r["case"], device, sizes)
        achieved = flops / r["seconds"]
        rows.append({**r, "flops": flops, "tflops_per_s": achieved / 1e12,
                     "mfu": (achieved / (peak_flops * 1e12)) if peak_flops else None})
    report = {"device": device, "tiny": tiny, "peak_bf16_tflops": peak_flops, "sizes": sizes, "results": rows}
    print(f"\nMFU (dense bf16 peak {peak_flops or 'unknown'} TFLOP/s), {'tiny dry run' if tiny else 'SD 1.5 at 512²'} on {device}")
    print("| case | what | throughput | peak memory MB | TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
        print(f"| {r['case']} | {r['what']} | {r['rate']:.2f} {r['unit']} | {r['peak_mb']:.0f} | {r['tflops_per_s']:.3f} | {mfu} |")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny widths at 64 px, one step each, in-process (CPU dry run)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device (default: by its name)")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = p.parse_args(argv)
    run(args.device, args.tiny, args.peak_tflops, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
