"""`kedro run` / `python -m tisynth`: a deliberate refusal ends the output with its message;
any other exception keeps its traceback."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from tests.test_ingest import make_folder
from tisynth.cli import TRACEBACK_VARIABLE, refusing, run
from tisynth.io import DataError
from tisynth.validation import ParameterError

BIN = Path(sys.executable).parent
MESSAGE = "2 problem(s) in dataset /d (nothing was written):\n  /d/a.jpg: missing mask\n  /d/b.jpg: truncated"


def _raising(exc: BaseException):
    def callback(**kwargs):
        raise exc
    return callback


def test_a_refusal_ends_with_its_message_and_exit_status_1(monkeypatch):
    monkeypatch.delenv(TRACEBACK_VARIABLE, raising=False)
    out = io.StringIO()
    with pytest.raises(SystemExit) as stop:
        refusing(_raising(DataError(MESSAGE)), out)(pipeline="ingest")
    assert stop.value.code == 1
    lines = out.getvalue().rstrip("\n").split("\n")
    assert lines[0] == f"Run refused ({TRACEBACK_VARIABLE}=1 shows the traceback):"
    assert lines[1:] == ["DataError: 2 problem(s) in dataset /d (nothing was written):", "  /d/a.jpg: missing mask",
                         "  /d/b.jpg: truncated"]
    assert refusing(lambda **kw: kw, out)(x=1) == {"x": 1}  # a run that succeeds returns what Kedro's returns


def test_other_exceptions_and_the_traceback_variable_let_the_exception_through(monkeypatch):
    from kedro.io.core import DatasetError

    monkeypatch.delenv(TRACEBACK_VARIABLE, raising=False)
    bug = ValueError("an ordinary bug")
    with pytest.raises(ValueError) as err:
        refusing(_raising(bug), io.StringIO())()
    assert err.value is bug
    with pytest.raises(DatasetError):  # a dataset failing on its own, not on a refusal
        refusing(_raising(DatasetError("Failed while loading data from dataset x")), io.StringIO())()

    # a refusal raised inside a dataset reaches the run wrapped by Kedro: still a refusal
    try:
        try:
            raise ParameterError("bad value")
        except ParameterError as inner:
            raise DatasetError("Failed while loading data from dataset class_registry.\nbad value") from inner
    except DatasetError as wrapped:
        out = io.StringIO()
        with pytest.raises(SystemExit):
            refusing(_raising(wrapped), out)()
    expected = "ParameterError: Failed while loading data from dataset class_registry.\nbad value\n"
    assert out.getvalue().endswith(expected)

    monkeypatch.setenv(TRACEBACK_VARIABLE, "1")
    with pytest.raises(DataError, match="missing mask"):
        refusing(_raising(DataError(MESSAGE)), io.StringIO())()


def test_kedro_and_python_m_tisynth_use_this_run_command():
    import click
    from kedro.framework.cli.cli import KedroCLI
    from kedro.framework.cli.utils import find_run_command

    assert find_run_command("tisynth") is run
    kedro = KedroCLI(project_path=REPO)
    assert kedro.get_command(click.Context(kedro), "run") is run
    assert {p.name for p in run.params} >= {"pipelines", "params", "env", "namespaces"}


def _cli(args: list[str], cwd: Path, **env: str) -> tuple[int, str]:
    environ = {k: v for k, v in os.environ.items() if k != TRACEBACK_VARIABLE}
    done = subprocess.run(args, check=False, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600, env={**environ, "KEDRO_DISABLE_TELEMETRY": "1", **env})
    return done.returncode, done.stdout


def bad_folder(root: Path) -> Path:
    """A folder dataset with a mask value outside its class table, a truncated image and a missing mask."""
    make_folder(root)
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(root / "masks" / "t2.png")
    data = (root / "images" / "t1.jpg").read_bytes()
    (root / "images" / "t1.jpg").write_bytes(data[: len(data) // 2])
    (root / "masks" / "t3.png").unlink()
    return root


@pytest.mark.slow
def test_the_bad_folder_ends_with_its_three_problems(kedro_project, tmp_path):
    root = bad_folder(tmp_path / "bad")
    code, out = _cli([str(BIN / "kedro"), "run", "--pipelines=ingest", "--env=folder", f"--params=dataset.root={root}"],
                     kedro_project)
    lines = out.rstrip("\n").split("\n")
    assert code == 1 and "Traceback" not in out, out[-3000:]
    assert lines[-5] == f"Run refused ({TRACEBACK_VARIABLE}=1 shows the traceback):"
    assert lines[-4].startswith(f"DataError: 3 problem(s) in dataset {root} (nothing was written")
    assert sorted(line.split(": ", 1)[0] for line in lines[-3:]) == [f"  {root}/images/t{i}.jpg" for i in (1, 2, 3)]
    assert "value(s) [7] not in the class registry" in lines[-1] + lines[-2] + lines[-3]
    assert not (kedro_project / "data/02_intermediate/tiles").exists()

    # the same refusal with the traceback asked for
    code, out = _cli([str(BIN / "kedro"), "run", "--pipelines=ingest", "--env=folder", f"--params=dataset.root={root}"],
                     kedro_project, **{TRACEBACK_VARIABLE: "1"})
    assert code == 1 and "Traceback" in out and "plan_tiles" in out


@pytest.mark.slow
def test_python_m_tisynth_ends_a_parameter_typo_with_its_message_and_other_errors_with_a_traceback(kedro_project):
    code, out = _cli([sys.executable, "-m", "tisynth", "--pipelines=sample", "--params=sample.sampler.guidance_scal=3"],
                     kedro_project)
    assert code == 1 and "Traceback" not in out, out[-3000:]
    assert out.rstrip("\n").split("\n")[-1].startswith(
        "ParameterError: parameters sample: unknown sampling key(s) ['guidance_scal'] "
        "(guidance_scal: did you mean guidance_scale?)")

    # not a TisynthError: the demo writer refuses to write into a folder of real data with Kedro's DatasetError
    folder = make_folder(kedro_project / "real")
    code, out = _cli([sys.executable, "-m", "tisynth", "--pipelines=ingest", f"--params=dataset.root={folder}"],
                     kedro_project)
    assert code != 0 and "Traceback" in out and "Run refused" not in out, out[-3000:]
