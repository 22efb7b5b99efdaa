"""The contract of one pipeline: what it reads and writes, its nodes, and that both are declared."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

import yaml

from tests.conftest import REPO
from tisynth.validation import load_defaults


def catalog_entries() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "conf" / "base").glob("catalog*.yml"):
        names |= {k for k in (yaml.safe_load(path.read_text()) or {}) if not k.startswith("_")}
    return names


def check_contract(name: str, inputs: Iterable[str], outputs: Iterable[str], nodes: Iterable[str]) -> None:
    """``inputs``: free inputs; ``outputs``: every dataset a node writes; ``nodes``: function names."""
    pipe = importlib.import_module(f"tisynth.pipelines.{name}.pipeline").create_pipeline()
    assert pipe.inputs() == set(inputs)
    assert pipe.all_outputs() == set(outputs)
    assert {n.name for n in pipe.nodes} == {f"{name}.{f}" for f in nodes}
    for node in pipe.nodes:
        assert node.namespace == name and node.name == f"{name}.{node.func.__name__}", node.name
    # every dataset it writes has a catalog entry; every parameter block it reads has defaults
    assert set(outputs) <= catalog_entries(), sorted(set(outputs) - catalog_entries())
    defaults = load_defaults(REPO / "conf" / "base")
    params = {i.split(":", 1)[1].split(".", 1)[0] for i in inputs if i.startswith("params:")}
    assert params <= set(defaults), sorted(params - set(defaults))
