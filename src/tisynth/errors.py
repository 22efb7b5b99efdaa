"""The common base of every error tisynth raises on purpose.

Each stage has its own subclass (``RegistryError``, ``GeneratorError``, ``SamplingError``,
``FilterError``, ...), which also keeps its built-in base (``ValueError`` for bad input or
settings, ``RuntimeError`` for broken files), so ``except TisynthError`` catches every
deliberate refusal and nothing else.
"""

from __future__ import annotations


class TisynthError(Exception):
    """An input, setting or file that tisynth refuses, with a message naming what and where."""
