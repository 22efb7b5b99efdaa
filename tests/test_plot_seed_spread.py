"""benchmarks/plot_seed_spread.py: per-seed tables from experiment results and the figure."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "plot_seed_spread.py"


def _module():
    spec = importlib.util.spec_from_file_location("plot_seed_spread", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _results(path: Path, real: list[float], synth: list[float]) -> Path:
    rows = []
    for variant, values in (("real", real), ("tisynth", synth)):
        for seed, v in enumerate(values):
            rows += [{"variant": variant, "seed": seed, "eval_set": "test", "metric": "mIoU", "class": None, "value": v},
                     {"variant": variant, "seed": seed, "eval_set": "test", "metric": "IoU", "class": "water", "value": 0.1},
                     {"variant": variant, "seed": seed, "eval_set": "target test", "metric": "mIoU", "class": None,
                      "value": 0.0}]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_per_seed_reads_one_metric_of_one_eval_set(tmp_path):
    table = _module().per_seed(_results(tmp_path / "r.csv", [0.8, 0.82], [0.78, 0.85]), "mIoU", "test")
    assert list(table.index) == ["real", "tisynth"] and list(table.columns) == [0, 1]
    assert table.loc["tisynth", 1] == pytest.approx(85.0)  # percent; per-class and other eval-set rows left out
    with pytest.raises(SystemExit, match="no 'OA' rows"):
        _module().per_seed(tmp_path / "r.csv", "OA", "test")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="not a results_long.csv"):
        _module().per_seed(tmp_path / "bad.csv", "mIoU", "test")


def test_figure_is_written(tmp_path):
    one = _results(tmp_path / "one.csv", [0.8, 0.7, 0.75], [0.82, 0.74, 0.75])
    two = _results(tmp_path / "two.csv", [0.8, 0.81, 0.8], [0.7, 0.72, 0.71])
    out = tmp_path / "fig" / "spread.png"
    done = subprocess.run([sys.executable, str(SCRIPT), "--run", f"first={one}", "--run", f"second={two}",
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, str(SCRIPT), "--run", str(one), "--out", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "LABEL=FILE" in bad.stderr


def test_a_run_may_name_its_own_eval_set(tmp_path):
    mod = _module()
    csv = _results(tmp_path / "r.csv", [0.8, 0.82], [0.78, 0.85])
    assert mod.parse_run(f"shift={csv}@target test", "test") == ("shift", csv, "target test")
    assert mod.parse_run(f"plain={csv}", "test") == ("plain", csv, "test")
    odd = tmp_path / "a@b.csv"  # an existing file whose name holds '@' is read as it is
    odd.write_text("")
    assert mod.parse_run(f"odd={odd}", "val") == ("odd", odd, "val")
    out = tmp_path / "mixed.png"
    done = subprocess.run([sys.executable, str(SCRIPT), "--run", f"in={csv}", "--run", f"shift={csv}@target test",
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
