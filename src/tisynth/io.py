"""Small, safe file primitives shared by every stage.

* Atomic writes: data goes to a temporary file beside the target and is renamed into place,
  so an interrupted run never leaves a half-written file under the final name.
* Image reading/writing for the tile formats tisynth uses (PNG, JPEG, GeoTIFF), with errors
  that name the file.
* :class:`TileSet`: read access to a folder of tiles (``images/`` + ``masks/``) described by a
  manifest.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from tisynth.errors import TisynthError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")


class DataError(TisynthError, ValueError):
    """Input data that cannot be used; the message names the file and the problem."""


# ---------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the suffix so that writers choosing a format by suffix work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def staged_directory(path: str | Path) -> Iterator[Path]:
    """Build a directory under a staging name and swap it into place when the block succeeds.

    An interrupted build leaves ``path`` untouched (the old content, or nothing); the stale
    staging folder is removed by the next attempt.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(staging, path)
    if old.exists():
        shutil.rmtree(old)


TEMPORARY_PATTERN = ".*.tmp*"


def is_temporary(path: str | Path) -> bool:
    """Whether ``path`` is named like a hidden write-then-rename temporary (``.<name>.tmp*``, :func:`atomic_path`)."""
    return fnmatch.fnmatchcase(Path(path).name, TEMPORARY_PATTERN)


def clean_stale_temporaries(folder: str | Path) -> int:
    """Remove temporary files left by an interrupted atomic write under ``folder``; return how many."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.rglob(TEMPORARY_PATTERN):
            if p.is_file():
                p.unlink()
                n += 1
    return n


# ---------------------------------------------------------------------- images
def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB image as uint8 (H, W, 3). Grey images are repeated to 3 channels.

    GeoTIFFs are read with rasterio (first three bands); 16-bit imagery is rescaled to 8 bits
    by its 2nd-98th percentile range.
    """
    arr = read_raster(path)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] < 3:
        raise DataError(f"{path}: image has {arr.shape[2]} bands; need 1 or at least 3")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = to_uint8(arr)
    return np.ascontiguousarray(arr)


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Stretch a non-uint8 image to uint8 by its 2nd-98th percentile (per image)."""
    a = arr.astype(np.float32)
    lo, hi = np.percentile(a, [2, 98])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((a - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def read_raster(path: str | Path) -> np.ndarray:
    """Read an image or mask file as stored: (H, W) or (H, W, C), native dtype.

    Raises :class:`DataError` naming the file for missing, unreadable or truncated files.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() in TIFF_SUFFIXES:
        import rasterio
        from rasterio.errors import RasterioError

        try:
            with rasterio.open(path) as src:
                data = src.read()
        except (RasterioError, OSError) as exc:
            raise DataError(f"{path}: unreadable or truncated GeoTIFF ({exc})") from exc
        return data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGB")
            elif im.mode in ("RGBA", "LA", "CMYK", "YCbCr"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from exc
    if arr.dtype == np.int32 and path.suffix.lower() == ".png":
        # 16-bit grey PNGs open in mode "I" with int32 values
        arr = arr.astype(np.uint16)
    return arr


def write_image(path: str | Path, array: np.ndarray, quality: int = 95, png_level: int = 3) -> None:
    """Write an uint8 image (H, W, 3) or a mask (H, W) atomically; format from the suffix.

    ``png_level``: zlib level of PNGs (lossless at every level; 3 is several times faster than
    PIL's default 6 for a few percent more bytes)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        write_geotiff(path, array)
        return
    with atomic_path(path) as tmp:
        im = Image.fromarray(array)
        if suffix in (".jpg", ".jpeg"):
            im.save(tmp, format="JPEG", quality=quality)
        else:
            im.save(tmp, format="PNG", compress_level=png_level)


def write_geotiff(
    path: str | Path,
    array: np.ndarray,
    crs: Any = None,
    transform: Any = None,
    nodata: float | None = None,
    compress: str | None = "deflate",
) -> None:
    """Write (H, W) or (H, W, C) as a GeoTIFF atomically, with CRS and transform.

    ``compress``: a GDAL codec (deflate, lzw, zstd) or ``none``."""
    import rasterio

    bands = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": bands.shape[1],
        "width": bands.shape[2],
        "count": bands.shape[0],
        "dtype": bands.dtype.name,
        "compress": compress,
    }
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    if compress in (None, "none"):
        profile.pop("compress")
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(bands)


# ---------------------------------------------------------------------- tile sets
class TileSet:
    """A folder of tiles: ``images/<name>.<ext>`` and (for labelled tiles) ``masks/<name>.png``.

    Masks are stored in index space (0..K-1, 255 = ignore; see :mod:`tisynth.classes`).
    The manifest (a DataFrame with ``name``, ``image`` and ``mask`` relative paths) says which
    tiles belong to the set; this object only resolves and reads them.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"TileSet({str(self.root)!r})"

    def path(self, relative: str | os.PathLike[str]) -> Path:
        """The file of a manifest path (relative to the folder, or absolute inside it); refused
        when it leads out of the folder."""
        rel = Path(relative)
        full = rel if rel.is_absolute() else self.root / rel
        if ".." in rel.parts or not full.resolve().is_relative_to(self.root.resolve()):
            raise DataError(f"{self.root}: manifest path {str(relative)!r} leaves the tile folder; "
                            "paths in a manifest must stay inside it")
        return full

    def read_image(self, relative: str) -> np.ndarray:
        return read_image(self.path(relative))

    def read_mask(self, relative: str) -> np.ndarray:
        mask = read_raster(self.path(relative))
        if mask.ndim != 2:
            raise DataError(f"{self.path(relative)}: tile mask must be single-band, got shape {mask.shape}")
        return mask.astype(np.uint8, copy=False)

    def exists(self) -> bool:
        return self.root.is_dir()


def new_tempdir(prefix: str = "tisynth-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
