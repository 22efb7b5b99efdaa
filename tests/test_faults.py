"""Fault tests: each long stage, SIGKILLed at a seeded point mid-work, finishes on a rerun and
leaves exactly what an uninterrupted run leaves (no partial file, no duplicate, no stale
staging folder or lock). The stages run as separate processes (``tests/fault_worker.py``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow

TEMPORARY = (".tmp", ".staging", ".old", ".lock", ".partial")


def _start(stage: str, work: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "tests.fault_worker", stage, str(work)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def run_to_end(stage: str, work: Path) -> None:
    proc = _start(stage, work)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert (work / "out" / "finished").is_file()


def kill_when(stage: str, work: Path, ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start the stage and SIGKILL its whole process group as soon as ``ready()`` holds."""
    proc = _start(stage, work)
    deadline = time.time() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"{stage} ended before the kill point: {proc.stderr.read().decode()[-2000:]}")
            if time.time() > deadline:
                raise AssertionError(f"{stage} never reached the kill point")
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (work / "out" / "finished").exists()


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if any(t in p.name for t in TEMPORARY)]


def _count(folder: Path, pattern: str = "*") -> int:
    return sum(1 for p in folder.glob(pattern) if not p.name.startswith(".")) if folder.is_dir() else 0


def _seeded(stage: str, low: int, high: int) -> int:
    """A kill point drawn from a generator seeded by the stage's name (the same on every run)."""
    return int(np.random.default_rng(sum(map(ord, stage))).integers(low, high))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Uninterrupted runs, one per stage, made on first use."""
    done: dict[str, Path] = {}

    def get(stage: str) -> Path:
        if stage not in done:
            work = tmp_path_factory.mktemp(f"ref_{stage}")
            run_to_end(stage, work)
            done[stage] = work
        return done[stage]

    return get


def test_ingest_killed_while_writing_tiles(tmp_path, reference):
    staging = tmp_path / "out" / ".tiles.staging" / "images"
    k = _seeded("ingest", 20, 250)  # of 288 tiles
    kill_when("ingest", tmp_path, lambda: _count(staging) >= k)
    assert not (tmp_path / "out" / "tiles").exists()  # the folder appears only when complete
    run_to_end("ingest", tmp_path)
    assert files(tmp_path / "out" / "tiles") == files(reference("ingest") / "out" / "tiles")  # bit-exact
    assert leftovers(tmp_path / "out") == []


def test_sampling_killed_mid_run_resumes_bit_exact(tmp_path, reference):
    images = tmp_path / "out" / "images"
    k = _seeded("sample", 3, 20)  # of 24 images
    kill_when("sample", tmp_path, lambda: _count(images, "*.png") >= k)
    made = _count(images, "*.png")
    assert 0 < made < 24
    run_to_end("sample", tmp_path)
    assert files(images) == files(reference("sample") / "out" / "images")
    assert leftovers(tmp_path / "out") == []


def test_generator_training_killed_mid_step_resumes_to_the_same_losses(tmp_path, reference):
    ckpts = tmp_path / "out" / "checkpoints"
    k = _seeded("train_generator", 1, 6)  # checkpoints every 2 of 16 steps
    kill_when("train_generator", tmp_path, lambda: _count(ckpts, "step-*") >= 1
              and max(int(p.name.split("-")[1]) for p in ckpts.glob("step-*")) >= 2 * k)
    assert not (tmp_path / "out" / "history.json").exists()
    run_to_end("train_generator", tmp_path)
    ref = reference("train_generator") / "out"
    assert json.loads((tmp_path / "out" / "history.json").read_text()) == json.loads((ref / "history.json").read_text())
    a = torch.load(tmp_path / "out" / "unet.pt", weights_only=True)
    b = torch.load(ref / "unet.pt", weights_only=True)
    assert all(torch.equal(a[n], b[n]) for n in b)
    assert leftovers(tmp_path / "out") == []


def test_segmenter_training_killed_mid_run_resumes_from_its_last_checkpoint(tmp_path, reference):
    job = tmp_path / "out" / "job"
    k = _seeded("train_segmenter", 1, 8)  # checkpoints every 4 of 40 iterations
    kill_when("train_segmenter", tmp_path, lambda: (job / "last_checkpoint").is_file()
              and int((job / "last_checkpoint").read_text().strip().rsplit("_", 1)[1].split(".")[0]) >= 4 * k)
    assert not (job / "done.json").exists()
    run_to_end("train_segmenter", tmp_path)
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    ref = json.loads((reference("train_segmenter") / "out" / "info.json").read_text())
    assert info["iterations"] == ref["iterations"] == 40
    assert [r["iter"] for r in info["val_history"]] == [r["iter"] for r in ref["val_history"]]  # none lost or doubled
    assert leftovers(tmp_path / "out") == []


def test_filter_killed_mid_run_resumes_bit_exact(tmp_path, reference):
    masks = tmp_path / "out" / "filtered" / "masks"
    k = _seeded("filter", 3, 35)  # of 40 filtered masks
    kill_when("filter", tmp_path, lambda: _count(masks, "*.png") >= k)
    assert 0 < _count(masks, "*.png") < 40
    run_to_end("filter", tmp_path)
    assert files(tmp_path / "out" / "filtered") == files(reference("filter") / "out" / "filtered")
    assert leftovers(tmp_path / "out") == []
