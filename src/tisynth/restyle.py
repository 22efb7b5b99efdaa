"""Restyling baselines: labelled source images made to look like the target, with no generator.

A user who must segment a new sensor or region with labels from an old one has two cheap,
well-known alternatives to a diffusion model. Both keep every pixel where it is, so the source
masks stay valid as they are:

* ``fda`` — Fourier Domain Adaptation (Yang & Soatto, CVPR 2020): per band, the centred
  low-frequency square of the image's (fftshifted) amplitude spectrum is replaced by the Ref's,
  the phase is kept. The square has half-size ``floor(min(h, w) * beta)`` around the zero
  frequency (``2b + 1`` frequencies a side), as in the paper's code; ``beta`` defaults to the
  paper's 0.01. A Ref of another size is resized to the image's first (bilinear).
* ``histmatch`` — per-band histogram matching: every pixel of grey level ``v`` takes the Ref's
  value at the middle of ``v``'s step of the image's cumulative histogram (the Ref's lower
  inverse CDF there). The mapping is monotone, an image matched to itself is unchanged, and an
  image whose band values are all distinct gets exactly the Ref's quantiles.

:func:`restyle_folder` restyles a folder (a folder dataset with ``images/`` and ``masks/``, or a
plain folder of images) towards a seeded random Ref per image from a Ref folder, and
:func:`restyle_plan` the source images of a synthesis plan towards the plan's own Refs (the
experiment's ``fda`` / ``histmatch`` variants: the same mask × Ref pairs TISynth sampled).
Both check every input before the first file is written, write each image atomically, copy
masks byte for byte, skip finished images on a rerun and keep a manifest (``restyle.csv``).

``python -m tisynth restyle SRC REFS OUT --method fda|histmatch [--beta 0.01] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tisynth.errors import TisynthError
from tisynth.io import (IMAGE_SUFFIXES, TileSet, is_temporary, read_image, write_bytes_atomic, write_image,
                        write_text_atomic)

METHODS = ("fda", "histmatch")
DEFAULT_BETA = 0.01
MANIFEST = "restyle.csv"
MANIFEST_COLUMNS = ["image", "source", "ref", "method", "beta", "seed"]
DATASET_TABLES = ("classes.csv", "split.csv")
"""Tables of a folder dataset copied unchanged, so that the restyled folder is a dataset too."""
FLUSH_EVERY = 100
"""Images between two writes of the manifest during a run (and once at its end or interruption)."""


class RestyleError(TisynthError, ValueError):
    """A restyling setting, folder or plan that cannot be used; the message names it."""


# ---------------------------------------------------------------------- settings
def check_settings(method: str, beta: float) -> tuple[str, float]:
    """``(method, beta)`` when both can be used; otherwise :class:`RestyleError` naming the key."""
    if method not in METHODS:
        raise RestyleError(f"method: unknown restyling method {method!r}; use one of {', '.join(METHODS)}")
    try:
        value = float(beta)
    except (TypeError, ValueError):
        raise RestyleError(f"beta: must be a number in (0, 0.5], got {beta!r}") from None
    if isinstance(beta, bool) or not 0.0 < value <= 0.5:
        raise RestyleError(f"beta: must be in (0, 0.5] (the low band's half-size as a share of the "
                           f"shorter side), got {beta!r}")
    return method, value


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        kind = getattr(image, "dtype", type(image).__name__)
        raise RestyleError(f"{what}: expected an H×W×3 uint8 image, got {kind} {shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise RestyleError(f"{what}: empty image {image.shape}")
    return image


def resize_like(ref: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``ref`` resized (bilinear) to the height and width of ``shape``; unchanged when they match."""
    h, w = int(shape[0]), int(shape[1])
    if ref.shape[:2] == (h, w):
        return ref
    return np.asarray(Image.fromarray(ref).resize((w, h), Image.BILINEAR))


# ---------------------------------------------------------------------- FDA
def low_band(height: int, width: int, beta: float) -> tuple[slice, slice]:
    """The rows and columns of FDA's low-frequency square in an fftshifted spectrum.

    Half-size ``b = floor(min(height, width) * beta)`` around the zero frequency, which
    ``fftshift`` puts at ``(height // 2, width // 2)``: ``2b + 1`` frequencies a side, symmetric
    about zero, so the swapped spectrum stays that of a real image.
    """
    _, beta = check_settings("fda", beta)
    b = int(math.floor(min(height, width) * beta))
    ch, cw = height // 2, width // 2
    return slice(ch - b, ch + b + 1), slice(cw - b, cw + b + 1)


def fda_float(image: np.ndarray, ref: np.ndarray, beta: float = DEFAULT_BETA) -> np.ndarray:
    """FDA before rounding and clipping: float64 H×W×3 (see the module doc).

    Per band, the amplitude of the result's spectrum equals the Ref's inside :func:`low_band`
    and the image's outside it; its phase is the image's.
    """
    _check_image(image, "image")
    _check_image(ref, "ref")
    _, beta = check_settings("fda", beta)
    ref = resize_like(ref, image.shape)
    spectrum = np.fft.fft2(image.astype(np.float64), axes=(0, 1))
    amplitude, phase = np.abs(spectrum), np.angle(spectrum)
    ref_amplitude = np.abs(np.fft.fft2(ref.astype(np.float64), axes=(0, 1)))
    shifted = np.fft.fftshift(amplitude, axes=(0, 1))
    rows, cols = low_band(image.shape[0], image.shape[1], beta)
    shifted[rows, cols] = np.fft.fftshift(ref_amplitude, axes=(0, 1))[rows, cols]
    amplitude = np.fft.ifftshift(shifted, axes=(0, 1))
    return np.real(np.fft.ifft2(amplitude * np.exp(1j * phase), axes=(0, 1)))


def fda(image: np.ndarray, ref: np.ndarray, beta: float = DEFAULT_BETA) -> np.ndarray:
    """``image`` with the low-frequency amplitude of ``ref`` (FDA), rounded and clipped to uint8.

    Args:
        image: H×W×3 uint8, the labelled source image.
        ref: h×w×3 uint8 from the target domain, any size (resized to H×W first).
        beta: the low band's half-size as a share of ``min(H, W)``, in (0, 0.5].
    """
    return np.clip(np.rint(fda_float(image, ref, beta)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------- histogram matching
def _match_band(band: np.ndarray, ref_band: np.ndarray) -> np.ndarray:
    n, m = band.size, ref_band.size
    counts = np.bincount(band.ravel(), minlength=256).astype(np.int64)
    below = np.cumsum(counts) - counts
    # the Ref's lower inverse CDF at the middle of each grey level's step, (below + count / 2) / n,
    # in integers: the ceil((2 below + count) m / 2n)-th smallest Ref value
    index = -(-(2 * below + counts) * m // (2 * n)) - 1
    lut = np.sort(ref_band.ravel())[np.clip(index, 0, m - 1)]
    return lut[band]


def histmatch(image: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``image`` with each band's histogram matched to ``ref``'s (see the module doc); uint8.

    Args:
        image: H×W×3 uint8, the labelled source image.
        ref: h×w×3 uint8 from the target domain, any size (only its histograms are used).
    """
    _check_image(image, "image")
    _check_image(ref, "ref")
    out = np.empty_like(image)
    for b in range(3):
        out[..., b] = _match_band(image[..., b], ref[..., b])
    return out


def restyle(image: np.ndarray, ref: np.ndarray, method: str, beta: float = DEFAULT_BETA) -> np.ndarray:
    """``image`` restyled towards ``ref`` by ``method`` (``fda`` or ``histmatch``)."""
    method, beta = check_settings(method, beta)
    return fda(image, ref, beta) if method == "fda" else histmatch(image, ref)


# ---------------------------------------------------------------------- folder runs
@dataclass(frozen=True)
class Job:
    """One image to restyle: where it goes (relative to the output folder) and from what."""

    out: str
    source: Path
    ref: Path
    source_label: str
    ref_label: str


def _image_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith(".") or is_temporary(p):
            continue
        if p.stem in files:
            raise RestyleError(f"{folder}: two images named {p.stem!r} ({files[p.stem].name}, {p.name}); "
                               "names must be unique without their suffix")
        files[p.stem] = p
    return files


def _inside(path: Path, other: Path) -> bool:
    return path == other or path.is_relative_to(other)


def ref_index(seed: int, name: str, count: int) -> int:
    """The seeded Ref draw of image ``name`` among ``count`` Refs: fixed by (seed, name), so it
    does not depend on the order or the number of the other images."""
    digest = hashlib.blake2b(f"{int(seed)}:{name}".encode(), digest_size=8).digest()
    return int(np.random.default_rng(int.from_bytes(digest, "little")).integers(count))


def _manifest_row(job: Job, method: str, beta: float, seed: int | None) -> dict[str, object]:
    return {"image": job.out, "source": job.source_label, "ref": job.ref_label, "method": method,
            "beta": beta if method == "fda" else None, "seed": seed}


def _read_manifest(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={"image": str, "source": str, "ref": str, "method": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise RestyleError(f"{path}: unreadable restyling manifest ({exc}); remove it to start again") from exc
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise RestyleError(f"{path}: not a restyling manifest (missing column(s) {missing})")
    return frame


def _same(a: object, b: object) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return False
    return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)  # type: ignore[arg-type]


def _check_record(previous: pd.DataFrame, path: Path, method: str, beta: float, seed: int | None) -> None:
    """Refuse an output folder made with other settings (naming the key), before anything is written."""
    wanted = {"method": method, "beta": beta if method == "fda" else None, "seed": seed}
    for key, value in wanted.items():
        for old in previous[key].drop_duplicates().tolist():
            same = old == value if key == "method" else _same(old, value)
            if not same:
                raise RestyleError(f"{path}: {key}: this folder was restyled with {key}={old!r}, this run asks "
                                   f"for {key}={value!r}; choose another output folder")


def _write_manifest(path: Path, rows: Mapping[str, dict[str, object]]) -> None:
    frame = pd.DataFrame(list(rows.values()), columns=MANIFEST_COLUMNS).sort_values("image")
    write_text_atomic(path, frame.to_csv(index=False))


def run_jobs(jobs: Sequence[Job], out: Path, method: str, beta: float, seed: int | None,
             copies: Iterable[tuple[Path, Path]] = (), progress: bool = True) -> pd.DataFrame:
    """Restyle ``jobs`` into ``out`` and copy ``copies`` (source file, destination) byte for byte.

    Every setting, the output folder's record and every image still to be made (and its Ref) are
    checked before anything is written. An image is finished when it exists and the manifest
    records it with the same source and Ref: it is skipped. Returns the manifest of ``jobs``.
    """
    from tqdm.auto import tqdm

    method, beta = check_settings(method, beta)
    if not jobs:
        raise RestyleError(f"{out}: nothing to restyle (no images)")
    manifest_path = out / MANIFEST
    rows: dict[str, dict[str, object]] = {}
    if manifest_path.is_file():
        previous = _read_manifest(manifest_path)
        _check_record(previous, manifest_path, method, beta, seed)
        rows = {str(r["image"]): r for r in previous.to_dict("records")}
    done = {j.out for j in jobs if (out / j.out).is_file() and j.out in rows
            and rows[j.out]["source"] == j.source_label and rows[j.out]["ref"] == j.ref_label}
    todo = [j for j in jobs if j.out not in done]
    # every input read once before the first write: an unreadable file stops the run with nothing made
    for path in tqdm(sorted({p for j in todo for p in (j.source, j.ref)}), desc="checking", unit="img",
                     disable=not progress or not todo):
        read_image(path)
    copies = list(copies)
    for src, _ in copies:
        if not src.is_file():
            raise RestyleError(f"{src}: file not found")
    out.mkdir(parents=True, exist_ok=True)
    for src, dst in copies:
        data = src.read_bytes()
        if not dst.is_file() or dst.read_bytes() != data:
            write_bytes_atomic(dst, data)
    refs: dict[Path, np.ndarray] = {}
    try:
        with tqdm(total=len(jobs), initial=len(done), desc=f"restyle ({method})", unit="img",
                  disable=not progress) as bar:
            for i, job in enumerate(todo):
                if job.ref not in refs:
                    if len(refs) > 256:
                        refs.clear()
                    refs[job.ref] = read_image(job.ref)
                write_image(out / job.out, restyle(read_image(job.source), refs[job.ref], method, beta))
                rows[job.out] = _manifest_row(job, method, beta, seed)
                bar.update(1)
                if (i + 1) % FLUSH_EVERY == 0:
                    _write_manifest(manifest_path, rows)
    finally:
        if todo:
            _write_manifest(manifest_path, rows)
    if not manifest_path.is_file():
        _write_manifest(manifest_path, rows)
    return pd.DataFrame([rows[j.out] for j in jobs], columns=MANIFEST_COLUMNS)


def restyle_folder(src: str | Path, refs: str | Path, out: str | Path, method: str = "fda",
                   beta: float = DEFAULT_BETA, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Restyle every image of ``src`` towards a seeded random Ref from ``refs``, into ``out``.

    ``src`` is a folder dataset (``images/``, and ``masks/`` / ``classes.csv`` / ``split.csv``
    when present: copied unchanged, so ``out`` is a folder dataset with the same labels) or a
    plain folder of images; ``refs`` likewise (its ``images/`` are the Refs). Restyled images
    are PNG files named like their source (``out/images/<name>.png`` or ``out/<name>.png``).
    The Ref of each image is drawn by :func:`ref_index` from the Refs sorted by name. Returns
    the manifest (also ``out/restyle.csv``: image, source, ref, method, beta, seed).
    """
    method, beta = check_settings(method, beta)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise RestyleError(f"seed: must be an integer, got {seed!r}")
    src, refs, out = Path(src), Path(refs), Path(out)
    for key, folder in (("SRC", src), ("REFS", refs)):
        if not folder.is_dir():
            raise RestyleError(f"{key} {folder}: folder not found")
    for key, folder in (("SRC", src), ("REFS", refs)):
        a, b = out.resolve(), folder.resolve()
        if _inside(a, b) or _inside(b, a):
            raise RestyleError(f"OUT {out}: must lie outside {key} {folder} (and not contain it)")
    dataset = (src / "images").is_dir()
    images = _image_files(src / "images" if dataset else src)
    if not images:
        raise RestyleError(f"SRC {src}: no images ({', '.join(IMAGE_SUFFIXES)})"
                           + (" in images/" if dataset else ""))
    ref_root = refs / "images" if (refs / "images").is_dir() else refs
    ref_files = list(_image_files(ref_root).values())
    if not ref_files:
        raise RestyleError(f"REFS {refs}: no images ({', '.join(IMAGE_SUFFIXES)})")
    prefix = "images/" if dataset else ""
    jobs = []
    for name, path in images.items():
        ref = ref_files[ref_index(int(seed), name, len(ref_files))]
        jobs.append(Job(f"{prefix}{name}.png", path, ref, path.relative_to(src).as_posix(),
                        ref.relative_to(refs).as_posix()))
    copies: list[tuple[Path, Path]] = []
    if dataset:
        if (src / "masks").is_dir():
            copies += [(p, out / "masks" / p.name) for p in sorted((src / "masks").iterdir())
                       if p.is_file() and not p.name.startswith(".")]
        copies += [(src / t, out / t) for t in DATASET_TABLES if (src / t).is_file()]
    return run_jobs(jobs, out, method, beta, int(seed), copies, progress)


def restyle_plan(plan: pd.DataFrame, tiles: TileSet, ref_sets: Mapping[str, TileSet], folder: str | Path,
                 method: str, beta: float = DEFAULT_BETA, progress: bool = True) -> pd.DataFrame:
    """The source image of every synthesis-plan row restyled towards that row's own Ref.

    The plan's rows are the pairs TISynth sampled (mask × Ref × seed, the Refs drawn by the
    plan's seeded pairing); here each row's labelled source tile (``image_of_mask``) is restyled
    towards its Ref (``ref`` of the ``ref_domain`` tile set), so the set has as many pairs as the
    plan and differs from TISynth's only in how the image is made. Images go to
    ``folder/images/<name>.png`` (resumable; manifest ``folder/restyle.csv``).

    Returns one row per plan row: ``name``, ``image`` (relative to ``folder``), ``mask``
    (the tile mask, relative to ``tiles``: unchanged), ``ref_domain``, ``ref``, ``method``, ``beta``.
    """
    method, beta = check_settings(method, beta)
    need = ["name", "mask", "image_of_mask", "ref_domain", "ref"]
    missing = [c for c in need if c not in plan.columns]
    if missing:
        raise RestyleError(f"synthesis_plan: missing column(s) {missing}; has {list(plan.columns)}")
    if plan.empty:
        raise RestyleError("synthesis_plan: no rows to restyle")
    jobs = []
    for r in plan.itertuples(index=False):
        if r.ref_domain not in ref_sets:
            raise RestyleError(f"synthesis_plan: row {r.name!r} takes its Ref from the {r.ref_domain!r} tiles, "
                               f"which were not given (have {sorted(ref_sets)})")
        if not isinstance(r.ref, str) or not r.ref:
            raise RestyleError(f"synthesis_plan: row {r.name!r} has no Ref")
        jobs.append(Job(f"images/{r.name}.png", tiles.path(r.image_of_mask), ref_sets[r.ref_domain].path(r.ref),
                        str(r.image_of_mask), f"{r.ref_domain}/{r.ref}"))
    if len({j.out for j in jobs}) != len(jobs):
        raise RestyleError("synthesis_plan: names are not unique")
    run_jobs(jobs, Path(folder), method, beta, None, (), progress)
    return pd.DataFrame({"name": plan["name"].astype(str).to_numpy(), "image": [j.out for j in jobs],
                         "mask": plan["mask"].to_numpy(), "ref_domain": plan["ref_domain"].to_numpy(),
                         "ref": plan["ref"].to_numpy(), "method": method,
                         "beta": beta if method == "fda" else None})


# ---------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tisynth restyle", description=__doc__.splitlines()[0])
    p.add_argument("src", help="folder dataset (images/, masks/, ...) or a folder of images to restyle")
    p.add_argument("refs", help="target-domain Refs: a folder of images (or a folder dataset's images/)")
    p.add_argument("out", help="output folder (outside SRC); masks and dataset tables are copied unchanged")
    p.add_argument("--method", required=True, choices=METHODS, help="fda: Fourier Domain Adaptation; "
                   "histmatch: per-band histogram matching")
    p.add_argument("--beta", type=float, default=DEFAULT_BETA, help="FDA's low band, a share of the shorter "
                   "side in (0, 0.5] (default %(default)s, as in the paper)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Ref draw per image (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        manifest = restyle_folder(args.src, args.refs, args.out, args.method, args.beta, args.seed, not args.quiet)
    except TisynthError as exc:
        print(f"restyle: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{len(manifest)} images restyled by {args.method} in {args.out} (manifest {Path(args.out) / MANIFEST})")
    return 0

