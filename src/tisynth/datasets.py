"""Kedro datasets for tisynth's artifacts.

Folders of files (tiles, synthetic images, filtered masks) and model directories are
catalog entries like any table. Nodes hand these datasets *writers*, callables that fill a
folder, so that the catalog alone decides where things live:

* ``FileTreeDataset(mode="staged")`` runs the writer in a staging folder and swaps it into
  place only when the writer finished: an interrupted run leaves the previous content intact
  and no half-written tree.
* ``FileTreeDataset(mode="incremental")`` runs the writer on the final folder itself; writers
  write each file atomically and skip files that already exist, so an interrupted long job
  resumes where it stopped and never duplicates work.
* ``ModelDirectoryDataset`` saves objects with ``save_pretrained`` (staged the same way) and
  loads them with ``<class>.from_pretrained``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from tisynth.classes import ClassRegistry
from tisynth.io import TileSet, clean_stale_temporaries, staged_directory, write_json_atomic

FolderWriter = Callable[[Path], Any]


class ClassRegistryDataset(AbstractDataset[ClassRegistry, ClassRegistry]):
    """The class registry as JSON (ids, names, colours, ignore id)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> ClassRegistry:
        with self._filepath.open(encoding="utf-8") as fh:
            return ClassRegistry.from_dict(json.load(fh))

    def save(self, data: ClassRegistry) -> None:
        write_json_atomic(self._filepath, data.to_dict())

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class FileTreeDataset(AbstractDataset[FolderWriter | TileSet, TileSet]):
    """A folder of files produced by a writer callable; loads as a :class:`TileSet`.

    Args:
        path: the folder.
        mode: ``staged`` (build aside, swap in at the end; reruns replace the folder) or
            ``incremental`` (write in place; writers skip finished files).
    """

    def __init__(self, path: str, mode: str = "staged", metadata: dict[str, Any] | None = None):
        if mode not in ("staged", "incremental"):
            raise DatasetError(f"FileTreeDataset mode must be 'staged' or 'incremental', got {mode!r}")
        self._path = Path(path)
        self._mode = mode
        self.metadata = metadata

    @property
    def path(self) -> Path:
        return self._path

    def load(self) -> TileSet:
        if not self._path.is_dir():
            raise DatasetError(f"{self._path}: folder does not exist; run the pipeline that writes it first")
        return TileSet(self._path)

    def save(self, data: FolderWriter | TileSet) -> None:
        if isinstance(data, TileSet):
            if data.root.resolve() != self._path.resolve():
                raise DatasetError(f"cannot save TileSet at {data.root} into {self._path}; give a writer")
            return
        if not callable(data):
            raise DatasetError(f"FileTreeDataset({self._path}) expects a writer callable, got {type(data).__name__}")
        if self._mode == "staged":
            with staged_directory(self._path) as staging:
                data(staging)
        else:
            self._path.mkdir(parents=True, exist_ok=True)
            clean_stale_temporaries(self._path)
            data(self._path)

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "mode": self._mode}


class ModelDirectoryDataset(AbstractDataset[Any, Any]):
    """A model saved with ``save_pretrained(folder)`` and loaded with ``cls.from_pretrained``.

    Args:
        path: the folder.
        model_class: dotted path of the class whose ``from_pretrained`` loads it.
        load_args: keyword arguments for ``from_pretrained``.
    """

    def __init__(
        self,
        path: str,
        model_class: str,
        load_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self._path = Path(path)
        self._model_class = model_class
        self._load_args = dict(load_args or {})
        self.metadata = metadata

    def _cls(self) -> Any:
        module, _, name = self._model_class.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise DatasetError(f"model_class {self._model_class!r} cannot be imported: {exc}") from exc

    def load(self) -> Any:
        if not self._path.is_dir():
            raise DatasetError(f"{self._path}: no saved model; run the pipeline that trains it first")
        return self._cls().from_pretrained(self._path, **self._load_args)

    def save(self, data: Any) -> None:
        if not hasattr(data, "save_pretrained"):
            raise DatasetError(f"{type(data).__name__} has no save_pretrained(); cannot save to {self._path}")
        with staged_directory(self._path) as staging:
            data.save_pretrained(staging)

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "model_class": self._model_class}


class RawFolder:
    """Handle on a raw dataset folder (read-only input of the ``ingest`` pipeline); ``root`` is
    None for an optional dataset that was not given."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None

    def __repr__(self) -> str:
        return f"RawFolder({str(self.root)!r})"


class UseExisting:
    """Saved to a :class:`RawFolderDataset`: keep the folder as it is (real data is only read)."""

    def __repr__(self) -> str:
        return "UseExisting()"


class RawFolderDataset(AbstractDataset[FolderWriter | UseExisting, RawFolder]):
    """A raw dataset folder. Loading checks that it exists; saving is only for generated raw
    data (the embedded demo scenes): a writer fills the folder, :class:`UseExisting` leaves
    it alone.

    A writer never replaces a folder that it did not create itself (a folder without the
    ``marker`` file), so a user's data cannot be overwritten by a misconfigured run. With
    ``optional``, an empty ``folder`` means "not given" and loads as ``RawFolder(None)``.
    """

    def __init__(self, folder: str, marker: str = ".tisynth-demo", optional: bool = False,
                 metadata: dict[str, Any] | None = None):
        # `folder`, not `path`: Kedro would turn an empty `path` into the project root
        if not folder and not optional:
            raise DatasetError("RawFolderDataset: no folder given (set the dataset's root)")
        self._path = Path(folder) if folder else None
        self._marker = marker
        self.metadata = metadata

    def load(self) -> RawFolder:
        if self._path is None:
            return RawFolder(None)
        if not self._path.is_dir():
            raise DatasetError(
                f"{self._path}: dataset folder not found; pass --params=dataset.root=<folder> "
                "(images/, masks/, classes.csv, optional split.csv)"
            )
        return RawFolder(self._path)

    def save(self, data: FolderWriter | UseExisting) -> None:
        if isinstance(data, UseExisting):
            self.load()  # fail now, clearly, if the folder is missing
            return
        if self._path is None:
            raise DatasetError("RawFolderDataset: no path to write generated data to")
        if self._path.exists() and any(self._path.iterdir()) and not (self._path / self._marker).exists():
            raise DatasetError(
                f"{self._path}: refusing to write generated data into a folder that holds other data "
                f"(no {self._marker} marker); set dataset.kind to 'folder' or 'geotiff' for real data"
            )
        with staged_directory(self._path) as staging:
            data(staging)

    def _exists(self) -> bool:
        return self._path is None or self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path) if self._path else None}


class JSONLinesDataset(AbstractDataset[Any, Any]):
    """A DataFrame as JSON lines, one object per row (the original TISynth manifest format)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> Any:
        import pandas as pd

        with self._filepath.open(encoding="utf-8") as fh:
            return pd.DataFrame([json.loads(line) for line in fh if line.strip()])

    def save(self, data: Any) -> None:
        from tisynth.io import write_text_atomic

        records = data.to_dict(orient="records")
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        write_text_atomic(self._filepath, text)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
