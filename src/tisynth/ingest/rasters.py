"""Raster sources, tile windows and windowed reads.

A *source* is one image (plus its optional label raster): an ordinary PNG/JPEG/TIFF picture
or a georeferenced GeoTIFF scene. Both are read through :class:`RasterSource`, which gives
windowed reads (rasterio windows for GeoTIFFs, array slices for pictures), so a large scene is
never held in memory and every tile keeps its place in the scene: the tile's affine transform
is ``rasterio.windows.transform(window, scene_transform)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tisynth.io import TIFF_SUFFIXES, DataError, read_raster, to_uint8

EDGE_MODES = ("shift", "pad", "drop")


@dataclass(frozen=True)
class Window:
    """A tile window in source pixels; may extend past the source edge (``pad`` mode)."""

    row_off: int
    col_off: int
    height: int
    width: int

    def to_rasterio(self) -> Any:
        from rasterio.windows import Window as RioWindow

        return RioWindow(self.col_off, self.row_off, self.width, self.height)


def tile_windows(height: int, width: int, tile_size: int, stride: int | None = None, edge: str = "shift") -> list[Window]:
    """Windows of ``tile_size`` covering a ``height × width`` source, row-major.

    ``edge``: ``shift`` moves the last row/column of windows back inside the source (they
    overlap their neighbours); ``pad`` lets them run past the edge (padded with no-data);
    ``drop`` discards windows that do not fit. A source smaller than a tile yields one padded
    window under ``shift`` and ``pad`` and none under ``drop``.
    """
    if edge not in EDGE_MODES:
        raise ValueError(f"edge must be one of {EDGE_MODES}, got {edge!r}")
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    stride = stride or tile_size
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")

    def offsets(n: int) -> list[int]:
        if n <= tile_size:
            return [0] if (n == tile_size or edge != "drop") else []
        offs = list(range(0, n - tile_size + 1, stride))
        last = offs[-1] + tile_size
        if last < n:
            if edge == "shift":
                offs.append(n - tile_size)
            elif edge == "pad":
                offs.append(offs[-1] + stride)
        return offs

    return [Window(r, c, tile_size, tile_size) for r in offsets(height) for c in offsets(width)]


class RasterSource:
    """Windowed access to one image file (GeoTIFF via rasterio, pictures via PIL).

    Args:
        path: the file.
        bands: 1-based band indices to read for GeoTIFF imagery (None = all).
    """

    def __init__(self, path: str | Path, bands: Sequence[int] | None = None):
        self.path = Path(path)
        self.bands = list(bands) if bands else None
        self._array: np.ndarray | None = None
        self._rio: Any = None
        self.crs: Any = None
        self.transform: Any = None
        self.nodata: float | None = None
        if not self.path.is_file():
            raise DataError(f"{self.path}: file not found")
        if self.path.suffix.lower() in TIFF_SUFFIXES:
            import rasterio
            from rasterio.errors import RasterioError

            try:
                self._rio = rasterio.open(self.path)
            except (RasterioError, OSError) as exc:
                raise DataError(f"{self.path}: unreadable GeoTIFF ({exc})") from exc
            self.height, self.width = self._rio.height, self._rio.width
            self.count = self._rio.count
            self.dtype = np.dtype(self._rio.dtypes[0])
            self.crs = self._rio.crs
            identity = self._rio.transform.is_identity
            self.transform = None if (identity and self.crs is None) else self._rio.transform
            self.nodata = self._rio.nodata
            if self.bands and max(self.bands) > self.count:
                raise DataError(f"{self.path}: asked for bands {self.bands} but the file has {self.count}")
        else:
            self._array = read_raster(self.path)
            self.height, self.width = self._array.shape[:2]
            self.count = 1 if self._array.ndim == 2 else self._array.shape[2]
            self.dtype = self._array.dtype

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None

    def close(self) -> None:
        if self._rio is not None:
            self._rio.close()
            self._rio = None

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, window: Window | None = None, fill: float = 0) -> np.ndarray:
        """Read a window as (h, w) or (h, w, c) in the file's dtype; outside pixels = ``fill``."""
        if window is None:
            window = Window(0, 0, self.height, self.width)
        if self._rio is not None:
            from rasterio.errors import RasterioError

            indexes = self.bands or list(range(1, self.count + 1))
            inside = (
                window.row_off >= 0
                and window.col_off >= 0
                and window.row_off + window.height <= self.height
                and window.col_off + window.width <= self.width
            )
            try:
                data = self._rio.read(
                    indexes, window=window.to_rasterio(), boundless=not inside, fill_value=fill
                )
            except (RasterioError, OSError) as exc:
                raise DataError(f"{self.path}: cannot read window {window} ({exc}); truncated or corrupt file?") from exc
            return data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
        assert self._array is not None
        arr = self._array
        r0, c0 = window.row_off, window.col_off
        r1, c1 = r0 + window.height, c0 + window.width
        if r0 >= 0 and c0 >= 0 and r1 <= self.height and c1 <= self.width:
            return arr[r0:r1, c0:c1]
        shape = (window.height, window.width) + arr.shape[2:]
        out = np.full(shape, fill, dtype=arr.dtype)
        rr0, cc0 = max(r0, 0), max(c0, 0)
        rr1, cc1 = min(r1, self.height), min(c1, self.width)
        if rr1 > rr0 and cc1 > cc0:
            out[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = arr[rr0:rr1, cc0:cc1]
        return out

    def valid_mask(self, window: Window) -> np.ndarray:
        """True where the image has data: inside the source and not equal to nodata."""
        valid = np.zeros((window.height, window.width), dtype=bool)
        r0, c0 = max(window.row_off, 0), max(window.col_off, 0)
        r1 = min(window.row_off + window.height, self.height)
        c1 = min(window.col_off + window.width, self.width)
        if r1 > r0 and c1 > c0:
            valid[r0 - window.row_off : r1 - window.row_off, c0 - window.col_off : c1 - window.col_off] = True
        if self.nodata is not None:
            data = self.read(window, fill=self.nodata)
            nod = data == self.nodata
            valid &= ~(nod.all(axis=-1) if nod.ndim == 3 else nod)
        return valid

    def window_transform(self, window: Window) -> Any:
        """Affine transform of a window (None when the source is not georeferenced)."""
        if self.transform is None:
            return None
        from rasterio.windows import transform as window_transform

        return window_transform(window.to_rasterio(), self.transform)

    def stretch_range(self, max_pixels: int = 1_000_000) -> tuple[float, float] | None:
        """2nd-98th percentile of a decimated read, for scene-wide 8-bit conversion of
        non-uint8 imagery (None for uint8)."""
        if self.dtype == np.uint8:
            return None
        if self._rio is not None:
            step = max(1, int(np.sqrt(self.height * self.width / max_pixels)))
            shape = (max(1, self.height // step), max(1, self.width // step))
            indexes = self.bands or list(range(1, self.count + 1))
            data = self._rio.read(indexes, out_shape=(len(indexes),) + shape).astype(np.float32)
            if self.nodata is not None:
                data = data[data != self.nodata]
        else:
            data = self._array.astype(np.float32)
        lo, hi = np.percentile(data, [2, 98]) if data.size else (0.0, 1.0)
        return float(lo), float(max(hi, lo + 1.0))


def to_rgb8(data: np.ndarray, stretch: tuple[float, float] | None, where: str) -> np.ndarray:
    """Image window -> uint8 (h, w, 3): first three bands, grey repeated, stretched if needed.

    The result may be a strided view of ``data``."""
    if data.ndim == 2:
        data = np.repeat(data[..., None], 3, axis=2)
    if data.shape[2] == 1:
        data = np.repeat(data, 3, axis=2)
    if data.shape[2] == 2:
        raise DataError(f"{where}: image has 2 bands; need 1 or at least 3")
    data = data[..., :3]
    if data.dtype == np.uint8:
        # a (h, w, 3) view of rasterio's band-first array: GeoTIFF writing moves the axis back
        # without a copy (PNG/JPEG encoders copy anyway)
        return data
    if stretch is None:
        return to_uint8(data)
    lo, hi = stretch
    return np.clip((data.astype(np.float32) - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def transform_to_list(transform: Any) -> list[float] | None:
    """Affine -> [a, b, c, d, e, f] (None passes through)."""
    if transform is None:
        return None
    return [float(v) for v in (transform.a, transform.b, transform.c, transform.d, transform.e, transform.f)]
