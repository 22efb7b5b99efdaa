"""Speed and memory of the TISynth generator: our execution vs the authors' (reference) one.

Prints one table: stage-B training step time / throughput and guided DDIM sampling images/s,
with peak memory, for

* **ours**: only the ControlNet outputs that AIA consumes are computed, the frozen mask
  ControlNet runs without autograd, CFG branches in one batched forward, bf16 autocast on GPU
  (fp32 on CPU);
* **reference** (what the released code does): fp32 training with every ControlNet output and a
  mask ControlNet that requires gradients, separate conditional/unconditional sampling passes
  with every ControlNet output and fp16 autocast on GPU.

Each case runs in its own subprocess so that peak memory (CUDA max allocated, or the process's
peak RSS on CPU) belongs to that case alone. Random weights; no download.

Examples::

    python benchmarks/bench_generator.py                       # tiny preset, CPU
    python benchmarks/bench_generator.py --preset sd15 --device cuda --batch 2 --sample-batch 4
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from typing import Any

CASES = ("train_ours", "train_reference", "sample_ours", "sample_reference")


def _registry():  # noqa: ANN202 - a ClassRegistry
    from tisynth.classes import ClassRegistry

    names = ["built-up", "farmland", "forest", "meadow", "water"]
    return ClassRegistry.from_records([{"id": i, "name": n, "color": [40 * i + 1, 0, 0]} for i, n in enumerate(names)])


def _batch(k: int, b: int, size: int, seed: int = 0) -> list[dict[str, Any]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "mask": rng.integers(0, k, (size, size), dtype=np.uint8),
            "prompt": "a satellite image of farmland water",
        }
        for _ in range(b)
    ]


def _peak_memory_mb(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _run_case(case: str, args: argparse.Namespace, queue: Any) -> None:
    import torch

    from tisynth.generator import build_generator, sample_images
    from tisynth.generator.augment import RefAugment
    from tisynth.generator.data import collate_items
    from tisynth.generator.train import TrainConfig, _prepare_inputs, _StageModule

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    reg = _registry()
    overrides = json.loads(args.overrides) if args.overrides else {}
    model = build_generator({"preset": args.preset, **overrides, **({"image_size": args.image_size} if args.image_size else {})}, reg)
    size = args.image_size or model.config["image_size"]
    model.to(device)
    reference = case.endswith("reference")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result: dict[str, Any] = {"case": case}
    if case.startswith("train"):
        names = model.set_trainable("B")
        if reference:  # as released: the whole Ref ControlNet optimised, the mask ControlNet requires grad
            for n, p in model.named_parameters():
                if n.startswith(("ref_controlnet.", "mask_controlnet.", "aia.")):
                    p.requires_grad_(True)
            names = [n for n, p in model.named_parameters() if n.startswith(("ref_controlnet.", "aia."))]
        if args.gradient_checkpointing:
            model.enable_gradient_checkpointing(True)
        params = dict(model.named_parameters())
        opt = torch.optim.AdamW([params[n] for n in names], lr=1e-5)
        module = _StageModule(model, "tisynth", reference_path=reference)
        cfg = TrainConfig(stage="B", batch_size=args.batch)
        aug = RefAugment()
        batch = collate_items(_batch(reg.num_classes, args.batch, size))
        precision = "fp32" if reference or device.type != "cuda" else "bf16"
        ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if precision == "bf16" else (lambda: torch.autocast("cpu", enabled=False))
        times = []
        for i in range(args.warmup + args.train_steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(i)
            inputs = _prepare_inputs(model, batch, cfg, aug, gen, device, 1000)
            with ctx():
                loss = module(**inputs)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            model.clear_features()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        step = sum(times[args.warmup :]) / args.train_steps
        result.update(what=f"train step B (batch {args.batch}, {precision})", seconds=step, rate=args.batch / step, unit="img/s")
    else:
        items = _batch(reg.num_classes, args.sample_batch, size, seed=1)
        import numpy as np

        masks = np.stack([it["mask"] for it in items])
        refs = np.stack([it["image"] for it in items])
        prompts = [it["prompt"] for it in items]
        cfg = {"steps": args.sample_steps, "guidance_scale": 9.0, "batch_size": args.sample_batch, "reference_path": reference}
        sample_images(model, masks[:1], refs[:1], prompts[:1], [0], {**cfg, "steps": 1})  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        sample_images(model, masks, refs, prompts, list(range(len(prompts))), cfg)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        precision = ("fp16" if reference else "bf16/fp16 auto") if device.type == "cuda" else "fp32"
        result.update(
            what=f"sample {args.sample_batch} img × {args.sample_steps} DDIM steps, CFG ({precision})",
            seconds=dt,
            rate=args.sample_batch / dt,
            unit="img/s",
        )
    result["peak_mb"] = _peak_memory_mb(device)
    result["params"] = model.parameter_counts()
    queue.put(result)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=["tiny", "small", "sd15"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--image-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--batch", type=int, default=8, help="training batch")
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sample-batch", type=int, default=8)
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--overrides", default=None, help="generator config keys over the preset, as JSON")
    p.add_argument("--in-process", action="store_true",
                   help="run the cases in this process (quick dry runs; peak memory then covers every case so far)")
    args = p.parse_args(argv)

    ctx = mp.get_context("spawn")
    results = []
    for case in args.cases.split(","):
        if args.in_process:
            import queue

            local: queue.Queue = queue.Queue()
            _run_case(case, args, local)
            results.append(local.get())
            continue
        q = ctx.Queue()
        proc = ctx.Process(target=_run_case, args=(case, args, q))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            print(f"{case}: failed (exit code {proc.exitcode})", file=sys.stderr)
            continue
        results.append(q.get())
    if not results:
        return 1
    mem = "peak CUDA MB" if args.device.startswith("cuda") else "peak RSS MB"
    print(f"\nTISynth generator benchmark — preset {args.preset}, device {args.device}")
    print(f"parameters: {results[0]['params']}\n")
    header = f"| case | what | s / step or run | throughput | {mem} |"
    print(header)
    print("|" + "---|" * 5)
    for r in results:
        print(f"| {r['case']} | {r['what']} | {r['seconds']:.3f} | {r['rate']:.2f} {r['unit']} | {r['peak_mb']:.0f} |")
    by = {r["case"]: r for r in results}
    for kind in ("train", "sample"):
        if f"{kind}_ours" in by and f"{kind}_reference" in by:
            speedup = by[f"{kind}_ours"]["rate"] / by[f"{kind}_reference"]["rate"]
            print(f"\n{kind}: ours / reference throughput = {speedup:.2f}×", end="")
    print()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
