"""Every deliberate refusal is a TisynthError; no two error classes share a name."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import tisynth
from tisynth.errors import TisynthError


def _error_classes() -> list[type]:
    found = []
    for info in pkgutil.walk_packages(tisynth.__path__, "tisynth."):
        if info.name.startswith("tisynth.pipelines."):
            continue  # the nodes raise the errors of the modules they call
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__ and issubclass(obj, BaseException):
                found.append(obj)
    return found


def test_every_error_class_derives_from_the_common_base_and_names_are_unique():
    classes = _error_classes()
    assert len(classes) >= 20
    assert [c.__qualname__ for c in classes if not issubclass(c, TisynthError)] == []
    names = [c.__name__ for c in classes]
    assert sorted({n for n in names if names.count(n) > 1}) == []
