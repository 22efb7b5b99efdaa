"""Loading mmengine checkpoints under torch's ``weights_only`` unpickler.

torch >= 2.6 loads checkpoints with ``weights_only=True``: only tensors, containers and an
allowlist of classes may be unpickled, so a malicious file cannot run code. mmengine 0.10.7
calls ``torch.load`` with the default and fails on its own resume checkpoints, whose ``meta``
holds the message hub (``HistoryBuffer`` objects with numpy arrays).

Instead of switching ``weights_only`` off for the whole process (an environment variable), we
keep it on and allow exactly the few extra classes that mmengine's own checkpoints contain,
only for the duration of each load (``torch.serialization.safe_globals``).
:func:`register_safe_checkpoint_loader` installs :func:`load_checkpoint_file` as mmengine's
loader for local paths, which covers resuming, ``load_from``, best-checkpoint reloads and
local ``Pretrained`` backbone files. A file that needs anything else is rejected with an error
naming it (convert such a file to a plain state dict first).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tisynth.errors import TisynthError


class CheckpointError(TisynthError, RuntimeError):
    """A checkpoint that cannot be loaded safely; the message names the file."""


def _numpy_globals() -> list[Any]:
    """numpy objects that pickled arrays and scalars reference."""
    out: list[Any] = [np.ndarray, np.dtype]
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    out += [_reconstruct, scalar]
    dtype_classes = [type(np.dtype(t)) for t in (
        np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
        np.uint8, np.uint16, np.uint32, np.uint64, np.bool_,
    )]
    return out + dtype_classes


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """Stand-in for ``getattr`` during unpickling: only ``HistoryBuffer.<statistics method>``.

    mmengine pickles a buffer's statistics methods as ``getattr(HistoryBuffer, "mean")``;
    allowing the real ``getattr`` would let a crafted file reach arbitrary attributes (and
    from there code), so anything else is refused.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    allowed = set(HistoryBuffer._statistics_methods) | {"min", "max", "current", "mean"}
    if obj is HistoryBuffer and name in allowed and callable(getattr(HistoryBuffer, name, None)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"getattr({obj!r}, {name!r}) is not allowed in a checkpoint")


def trusted_globals() -> list[Any]:
    """Globals allowed besides torch's defaults: what mmengine's checkpoints hold."""
    from mmengine.logging.history_buffer import HistoryBuffer

    return [
        HistoryBuffer,
        (_history_buffer_getattr, "builtins.getattr"),
        (_history_buffer_getattr, "__builtin__.getattr"),
        *_numpy_globals(),
    ]


def local_checkpoint(work_dir: str | Path, recorded: str) -> str:
    """A checkpoint path recorded by an earlier session, taken inside ``work_dir``.

    mmengine writes every checkpoint into the work folder, so the file's name is all that counts:
    a folder that was moved or copied never reads (or lets mmengine delete) the original's files.
    """
    return str(Path(work_dir) / Path(recorded).name)


def load_checkpoint_file(filename: str | Path, map_location: Any = None) -> Any:
    """``torch.load(weights_only=True)`` with mmengine's checkpoint classes allowlisted.

    Raises:
        CheckpointError: the file is missing, or holds objects outside the allowlist.
    """
    path = Path(str(filename)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(trusted_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused by the weights-only unpickler ({str(exc).splitlines()[0]}). "
            "tisynth loads only tensors, containers and mmengine's logging buffers; convert this "
            "file to a plain state dict (torch.save(model.state_dict(), ...)) if you trust it"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # a zip archive cut short, a damaged file
        raise CheckpointError(f"{path}: cannot be read as a checkpoint, truncated or corrupt? "
                              f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from exc


def load_from_tisynth_local(filename: str, map_location: Any = None) -> Any:
    """mmengine ``CheckpointLoader`` entry for local paths (the name after ``load_from_`` is logged)."""
    return load_checkpoint_file(filename, map_location)


_REGISTERED = False


def register_safe_checkpoint_loader() -> None:
    """Make :func:`load_checkpoint_file` mmengine's loader for local paths (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes="", loader=load_from_tisynth_local, force=True)
    _REGISTERED = True
