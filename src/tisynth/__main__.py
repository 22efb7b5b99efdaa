"""Run the project as ``python -m tisynth`` (the same as ``kedro run``).

One more command is not a pipeline run: ``python -m tisynth import-checkpoint CHECKPOINT OUT_DIR
--classes TABLE`` imports the authors' TISynth checkpoint (:mod:`tisynth.generator.ldm_import`);
``python -m tisynth sensor-shift SOURCE OUT`` makes a sensor-shift target domain
(:mod:`tisynth.ingest.sensor_shift`); ``python -m tisynth restyle SRC REFS OUT --method fda|histmatch``
restyles labelled source images towards target Refs without a generator (:mod:`tisynth.restyle`).
"""

import sys
from pathlib import Path
from typing import Any

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project

COMMANDS = {"import-checkpoint": "tisynth.generator.ldm_import", "sensor-shift": "tisynth.ingest.sensor_shift",
            "restyle": "tisynth.restyle"}
"""Sub-commands that are not ``kedro run``: name -> module with ``main(argv) -> exit code``."""


def main(*args: Any, **kwargs: Any) -> Any:
    if not args and len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        from importlib import import_module

        sys.exit(import_module(COMMANDS[sys.argv[1]]).main(sys.argv[2:]))
    package_name = Path(__file__).parent.name
    configure_project(package_name)
    kwargs["standalone_mode"] = not hasattr(sys, "ps1")
    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()
