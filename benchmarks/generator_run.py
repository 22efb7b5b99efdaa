"""One generator run on a real dataset in its own workspace, timed stage by stage.

Makes a project folder (``conf/`` copied, its own ``data/`` and MLflow store), runs the given
pipelines in the ``folder`` environment with the dataset and any ``--set key=value`` overrides
(dotted keys, YAML values), and writes ``results/params.json`` (what
``benchmarks/mask_following.py`` reads) and ``results/timings.json`` (wall seconds per node).
Everything resumes: a rerun continues where the last one stopped.

    python benchmarks/generator_run.py --data ../shared/data/gid5 --taef2 ../shared/data/weights/taef2 \\
        --workspace <ws> [--pipelines synthesize] [--set train_generator.base.steps=2000 ...]

``--nodes`` runs single nodes of those pipelines, e.g. only the real-only segmenter a reading
needs: ``--pipelines filter --nodes filter.train_real_segmenter``.

Ablations at equal budget are one command each, e.g. ``--set generator.mask_conditioning=concat``
or ``--set generator.scheduler.rescale_betas_zero_snr=false`` with ``--pipelines ingest
references train_generator`` (the evaluation can borrow another workspace's segmenter).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiment import base_params, prepare_workspace, session  # noqa: E402


class _Timer:
    """Kedro hook: wall seconds per node."""

    def __init__(self) -> None:
        self.start: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def before_node_run(self, node: Any) -> None:  # noqa: D401 - hook spec
        self.start[node.name] = time.time()

    def after_node_run(self, node: Any) -> None:
        self.seconds[node.name] = time.time() - self.start.pop(node.name, time.time())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--workspace", required=True)
    p.add_argument("--taef2", help="folder with the TAEF2 weights")
    p.add_argument("--pipelines", nargs="+", default=["synthesize"])
    p.add_argument("--nodes", nargs="+", default=None,
                   help="run only these nodes of the pipelines (namespaced names, e.g. filter.train_real_segmenter)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="dotted.key=YAML value")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    workspace = Path(args.workspace).resolve()
    out = workspace / "results"
    prepare_workspace(workspace)
    out.mkdir(parents=True, exist_ok=True)
    params = base_params(args.data, args.taef2, args.overrides)
    (out / "params.json").write_text(json.dumps({"args": vars(args), "kedro_params": params}, indent=2, default=str))

    from kedro.framework.hooks import hook_impl

    timer = _Timer()

    class Hooks:
        @hook_impl
        def before_node_run(self, node: Any) -> None:
            timer.before_node_run(node)

        @hook_impl
        def after_node_run(self, node: Any) -> None:
            timer.after_node_run(node)

    import mlflow

    start = time.time()
    with session(workspace, params) as s:
        s._hook_manager.register(Hooks())
        s.run(pipeline_names=args.pipelines, node_names=args.nodes)
    while mlflow.active_run():
        mlflow.end_run()
    timings = {"total": time.time() - start, **timer.seconds}
    previous = json.loads((out / "timings.json").read_text()) if (out / "timings.json").is_file() else []
    (out / "timings.json").write_text(json.dumps([*previous, {"pipelines": args.pipelines, "nodes": args.nodes, "seconds": timings}], indent=2))
    for name, sec in timings.items():
        print(f"{name:40s} {sec / 60:7.1f} min")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
