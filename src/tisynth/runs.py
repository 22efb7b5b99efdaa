"""Resumable work folders: one primitive for every long stage.

A *run folder* holds the output of one long piece of work (a generator stage's checkpoints,
the synthetic images, the filtered masks, a segmenter's training) together with a manifest,
``run.json``, that records the *fingerprint* of everything the output depends on (settings and
input versions). Opening a folder compares fingerprints:

* same fingerprint: the work resumes; files already there are finished work and are kept;
* another fingerprint (or output with no manifest) is handled by an explicit policy:

  - ``set_aside`` (the default): the earlier output is moved, untouched, to
    ``<folder>/superseded/<old fingerprint digest>/`` with its manifest, and the new run starts
    empty. Nothing finished is ever deleted implicitly;
  - ``refuse``: raise :class:`RunFolderError` and touch nothing;
  - ``clear``: delete the earlier output (only when asked for by name).

Completion markers (:meth:`RunFolder.mark_done`) are small JSON files written atomically, so a
killed run never leaves a marker for unfinished work.

The hashers of the project live here too: :func:`settings_digest` for settings and any
JSON-able description, :func:`weights_digest` for the weights of a module, :func:`file_digest`
for the bytes of an input file. Inputs enter a fingerprint by their content, not by their path:
a project that is moved or copied resumes its work, and a file rewritten in place (a tile set
re-ingested, images sampled anew) never resumes work made from the old bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tisynth.errors import TisynthError
from tisynth.io import DataError, clean_stale_temporaries, is_temporary, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

MANIFEST = "run.json"
SUPERSEDED = "superseded"
POLICIES = ("set_aside", "refuse", "clear")


class RunFolderError(TisynthError, RuntimeError):
    """A work folder holds another run's output and the policy says not to touch it."""


def settings_digest(obj: Any, length: int = 16) -> str:
    """A stable hex digest of a JSON-able object (keys sorted; unknown types by ``str``)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=max(1, (length + 1) // 2)).hexdigest()[:length]


def weights_digest(weights: torch.nn.Module | Mapping[str, torch.Tensor], extra: Any = None,
                   length: int = 16) -> str:
    """A stable hex digest of a module's weights (names and values), plus an optional JSON-able ``extra``.

    Floating-point tensors are hashed as float32 (a bf16 copy and its float32 original give the
    same digest exactly when their float32 values are equal).
    """
    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    h = hashlib.blake2b(digest_size=max(1, (length + 1) // 2))
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in sorted(state.items()):
        h.update(name.encode("utf-8"))
        t = tensor.detach().cpu().contiguous()
        if t.is_floating_point():
            t = t.float()
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:length]


_FILE_DIGESTS: dict[tuple[str, int, int, int, int, int], str] = {}


def file_digest(path: str | Path, length: int = 16) -> str:
    """A hex digest of a file's bytes.

    Remembered within the process per (resolved path, inode, size, change times), so the many
    fingerprints of one experiment read each tile once.

    Raises:
        DataError: the file cannot be read (the message names it).
    """
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, length)
        known = _FILE_DIGESTS.get(key)
        if known is not None:
            return known
        h = hashlib.blake2b(digest_size=max(1, (length + 1) // 2))
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as err:
        raise DataError(f"{p}: cannot read it to fingerprint its content ({err.strerror or err})") from None
    digest = _FILE_DIGESTS[key] = h.hexdigest()[:length]
    return digest


class ItemRecords:
    """What each item of a resumable folder was made from: ``<root>/sources/<item>.txt``.

    Long stages that finish items one by one (latents, synthetic images, filtered masks) keep
    beside each item's output the digest of the inputs it was made from. One small file per
    item, so processes sharing the folder (sampling shards) never write the same file.

    Protocol: :meth:`begin` before writing an item's output (the record says ``pending``),
    :meth:`finish` after it. So an output of this version always has a record: a killed run
    leaves ``pending``, and the item is made again. An output with no record at all was made by
    an earlier version that kept none; it is taken as it is and recorded (:meth:`is_done`).
    An output whose inputs changed is moved, untouched, to
    ``<root>/superseded/changed-inputs/<its old record>/`` before it is made again.
    """

    DIR = "sources"
    PENDING = "pending"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.folder = self.root / self.DIR

    def _path(self, item: str) -> Path:
        return self.folder / f"{item}.txt"

    def read(self, item: str) -> str | None:
        try:
            return self._path(item).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise DataError(f"{self._path(item)}: cannot read the item record ({err.strerror or err})") from None

    def is_done(self, item: str, output: Path, digest: str) -> bool:
        """Whether ``output`` exists and was made from inputs with this digest (an unrecorded one is adopted)."""
        if not output.exists():
            return False
        have = self.read(item)
        if have is None:
            self.finish(item, digest)
            return True
        return have == digest

    def begin(self, item: str, output: Path) -> None:
        """Mark ``item`` pending; an existing output of other inputs is set aside first."""
        have = self.read(item)
        if output.exists() and have is not None and have != self.PENDING:
            aside = self.root / SUPERSEDED / "changed-inputs" / have / output.relative_to(self.root)
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(output, aside)
        self._write(item, self.PENDING)

    def finish(self, item: str, digest: str) -> None:
        self._write(item, digest)

    def _write(self, item: str, text: str) -> None:
        write_text_atomic(self._path(item), text)


def done_file(root: str | Path, name: str = "done") -> Path:
    """The completion marker ``<name>.json`` of the run folder ``root`` (see :meth:`RunFolder.mark_done`)."""
    return Path(root) / f"{name}.json"


@dataclass(frozen=True)
class RunFolder:
    """An opened run folder: ``root`` holds the output of the run described by ``fingerprint``."""

    root: Path
    fingerprint: Any
    resumed: bool
    superseded: Path | None = None

    @classmethod
    def open(
        cls,
        root: str | Path,
        fingerprint: Any,
        policy: str = "set_aside",
        entries: Iterable[str] | None = None,
        legacy_manifest: str | None = None,
        description: Mapping[str, Any] | None = None,
        adopt: Iterable[Any] = (),
    ) -> RunFolder:
        """Open ``root`` for the run ``fingerprint`` (any JSON-able value).

        Args:
            policy: what to do with another run's output: ``set_aside``, ``refuse`` or ``clear``.
            entries: the names inside ``root`` that belong to the run (e.g. ``["images"]``);
                default every entry except the manifest and ``superseded/``. Other files in
                ``root`` (written by someone else) are never moved.
            legacy_manifest: an older manifest file name; when ``run.json`` is absent and this
                file holds the same fingerprint, the folder is adopted and resumes.
            description: readable details stored in the manifest beside the fingerprint (not compared).
            adopt: fingerprints that earlier versions gave this very run (computed another way);
                a folder holding one of them is given ``fingerprint`` and resumes. Completion
                markers are not rewritten.
        """
        if policy not in POLICIES:
            raise RunFolderError(f"unknown run folder policy {policy!r}; expected one of {', '.join(POLICIES)}")
        root = Path(root)
        fingerprint = json.loads(json.dumps(fingerprint, default=str))  # the form it takes once written
        manifest = root / MANIFEST
        old = _read_manifest(manifest)
        if old is None and legacy_manifest and (root / legacy_manifest).is_file():
            legacy = _read_manifest(root / legacy_manifest)
            if legacy is not None and legacy.get("fingerprint", legacy) == fingerprint:
                old = {"fingerprint": fingerprint}
        record = {"fingerprint": fingerprint, **({"description": dict(description)} if description else {})}
        earlier = [json.loads(json.dumps(f, default=str)) for f in adopt]
        if old is not None and old.get("fingerprint") != fingerprint and old.get("fingerprint") in earlier:
            log.info("%s: output of this run under the fingerprint of an earlier version; adopted", root)
            write_json_atomic(manifest, {**old, **record})
            old = record
        if old is not None and old.get("fingerprint") == fingerprint:
            if not manifest.is_file():
                write_json_atomic(manifest, record)
            _remove_temporaries(root, entries)
            return cls(root, fingerprint, resumed=True)

        owned = _owned_entries(root, entries)
        aside = None
        if owned:
            described = "another run's output" if old is not None else "output with no run manifest"
            if policy == "refuse":
                raise RunFolderError(
                    f"{root}: holds {described} ({', '.join(p.name for p in owned[:5])}"
                    f"{', ...' if len(owned) > 5 else ''}); this run has another fingerprint. Choose another "
                    "folder, or move or delete that output yourself")
            if policy == "clear":
                log.warning("%s: deleting %s (policy 'clear')", root, described)
                for path in owned:
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
            else:
                aside = _set_aside(root, owned, old)
                log.warning("%s: settings or inputs changed since the last run; the earlier output was moved to %s",
                            root, aside)
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest, record)
        return cls(root, fingerprint, resumed=False, superseded=aside)

    def done_path(self, name: str = "done") -> Path:
        return done_file(self.root, name)

    def mark_done(self, payload: Mapping[str, Any] | None = None, name: str = "done") -> Path:
        """Write the completion marker ``<name>.json`` atomically (last step of the work)."""
        path = self.done_path(name)
        write_json_atomic(path, {"fingerprint": self.fingerprint, **dict(payload or {})})
        return path

    def done(self, name: str = "done") -> dict[str, Any] | None:
        """The payload of the completion marker, or ``None`` while the work is unfinished."""
        data = _read_manifest(self.done_path(name))
        if data is None or data.get("fingerprint") != self.fingerprint:
            return None
        return data


def _read_manifest(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a torn or foreign file is treated as no manifest: its folder is set aside, not trusted
    return data if isinstance(data, dict) else None


def _owned_entries(root: Path, entries: Iterable[str] | None) -> list[Path]:
    if not root.is_dir():
        return []
    if entries is None:
        found = [p for p in root.iterdir() if p.name not in (MANIFEST, SUPERSEDED)]
    else:
        found = [root / e for e in entries if (root / e).exists() or (root / e).is_symlink()]
    return sorted(p for p in found if not (p.is_dir() and not any(p.iterdir())))


def _remove_temporaries(root: Path, entries: Iterable[str] | None) -> None:
    """On resume: a run killed inside an atomic write left its hidden temporary file; not output, remove it."""
    n = 0
    for path in [*_owned_entries(root, entries), *root.glob(f".{Path(MANIFEST).stem}.*")]:
        if path.is_dir() and not path.is_symlink():
            n += clean_stale_temporaries(path)
        elif path.is_file() and is_temporary(path):
            path.unlink()
            n += 1
    if n:
        log.info("%s: removed %d temporary file(s) left by an interrupted write", root, n)


def _set_aside(root: Path, owned: list[Path], old: dict[str, Any] | None) -> Path:
    tag = settings_digest(old.get("fingerprint") if old else "unknown", length=12)
    parent = root / SUPERSEDED
    parent.mkdir(parents=True, exist_ok=True)
    aside = parent / tag
    n = 1
    while aside.exists():  # the same old run was set aside before: keep both
        aside = parent / f"{tag}-{n}"
        n += 1
    aside.mkdir()
    for path in owned:
        try:
            os.replace(path, aside / path.name)
        except FileNotFoundError:  # another process of the same run moved it first
            continue
    write_json_atomic(aside / MANIFEST, old if old is not None else {"fingerprint": None})
    return aside
