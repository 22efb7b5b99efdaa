"""Project commands: Kedro's ``run``, ending a deliberate refusal with its message.

``kedro run`` and ``python -m tisynth`` both use this ``run`` (Kedro takes a project's
``cli.py`` over its own). It is Kedro's command with one change: when the run stops on a
:class:`~tisynth.errors.TisynthError` (a node refusing its input, a parameter check), the output
ends with the refusal's message instead of a framework traceback, and the exit status is 1.
Any other exception keeps its full traceback, and so does a refusal with
``TISYNTH_TRACEBACK=1`` in the environment.
"""

from __future__ import annotations

import copy
import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

import click
from kedro.framework.cli.project import run as kedro_run

from tisynth.errors import TisynthError

TRACEBACK_VARIABLE = "TISYNTH_TRACEBACK"
"""Set to 1 (or true, yes) to see a refusal's traceback."""


def refusal_of(exc: BaseException) -> BaseException | None:
    """The exception to report as a refusal, or None: ``exc`` when it is a :class:`TisynthError`,
    or a Kedro ``DatasetError`` that a dataset raised from one (its message names the dataset)."""
    if isinstance(exc, TisynthError):
        return exc
    from kedro.io.core import DatasetError

    if isinstance(exc, DatasetError) and isinstance(exc.__cause__, TisynthError):
        return exc
    return None


def traceback_wanted(environ: dict[str, str] | None = None) -> bool:
    value = (os.environ if environ is None else environ).get(TRACEBACK_VARIABLE, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def format_refusal(exc: BaseException) -> str:
    """A hint line, then the refusal's class and message, which end the output."""
    kind = type(exc.__cause__ if not isinstance(exc, TisynthError) else exc).__name__
    return (f"Run refused ({TRACEBACK_VARIABLE}=1 shows the traceback):\n"
            f"{kind}: {str(exc).rstrip()}")


def refusing(callback: Callable[..., Any], stream: TextIO | None = None) -> Callable[..., Any]:
    """``callback`` that ends a refusal with :func:`format_refusal` on ``stream`` (stderr) and
    exit status 1, and lets every other exception through."""

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except Exception as exc:
            refusal = refusal_of(exc)
            if refusal is None or traceback_wanted():
                raise
            out = stream if stream is not None else sys.stderr
            sys.stdout.flush()  # the run's log first, the refusal last
            print(format_refusal(refusal), file=out, flush=True)
            raise SystemExit(1) from None

    return wrapper


@click.group(name="Kedro")
def cli() -> None:
    """Project commands of tisynth."""


run = copy.copy(kedro_run)
run.callback = refusing(kedro_run.callback)  # type: ignore[arg-type]
cli.add_command(run, name="run")
