"""core.preprocess: colour constancy and hair removal on real HAM10000 images and synthetic hair."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.preprocess import IMAGENET_MEAN, IMAGENET_STD, hair_mask, remove_hair, shades_of_gray


def _rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def real_images(ham_manifest):
    """Eight real HAM10000 images, one or more per class."""
    rows = ham_manifest.groupby("dx", sort=True).head(1)
    rows = list(rows["image_path"]) + list(ham_manifest["image_path"].iloc[[0]])
    return [_rgb(p) for p in rows]


def _draw_hair(rgb: np.ndarray, seed: int = 0, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hairy = rgb.copy()
    h, w = rgb.shape[:2]
    for _ in range(n):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(hairy, p1, p2, (25, 18, 12), 1)
    return hairy, np.any(hairy != rgb, axis=2)


def test_imagenet_constants():
    assert IMAGENET_MEAN == pytest.approx((0.485, 0.456, 0.406))
    assert IMAGENET_STD == pytest.approx((0.229, 0.224, 0.225))


def test_shades_of_gray_equalises_channel_means_on_real_images(real_images):
    spreads_before, spreads_after = [], []
    for rgb in real_images:
        out = shades_of_gray(rgb)
        assert out.dtype == np.uint8 and out.shape == rgb.shape
        spreads_before.append(np.ptp(rgb.reshape(-1, 3).mean(0)))
        spreads_after.append(np.ptp(out.reshape(-1, 3).mean(0)))
    before, after = np.array(spreads_before), np.array(spreads_after)
    # dermoscopy is strongly red-tinted: the channel-mean spread must shrink a lot on every image
    assert before.mean() > 40
    assert (after < 0.5 * before).all(), (before, after)
    assert after.mean() < 0.3 * before.mean()


def test_shades_of_gray_removes_an_illuminant_colour_cast(real_images):
    rgb = real_images[0]
    cast = np.clip(rgb.astype(np.float64) * np.array([0.8, 1.0, 1.15]), 0, 255).astype(np.uint8)
    a, b = shades_of_gray(rgb).astype(float), shades_of_gray(cast).astype(float)
    # chromaticity (channel shares) of the corrected images agree although the inputs differ
    chroma = lambda x: x.reshape(-1, 3).mean(0) / x.reshape(-1, 3).mean(0).sum()  # noqa: E731
    assert np.abs(chroma(rgb.astype(float)) - chroma(cast.astype(float))).max() > 0.03
    assert np.abs(chroma(a) - chroma(b)).max() < 0.01


def test_shades_of_gray_leaves_a_grey_image_alone_and_checks_input():
    grey = np.full((20, 30, 3), 128, np.uint8)
    assert np.array_equal(shades_of_gray(grey), grey)
    black = np.zeros((5, 5, 3), np.uint8)
    assert np.array_equal(shades_of_gray(black), black)
    with pytest.raises(ValueError):
        shades_of_gray(np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError):
        shades_of_gray(np.zeros((5, 5, 3), np.float32))


def test_remove_hair_on_synthetic_skin():
    skin = np.empty((150, 200, 3), np.uint8)
    skin[:] = (205, 150, 140)
    cv2.circle(skin, (100, 75), 35, (140, 90, 70), -1)
    skin = cv2.GaussianBlur(skin, (0, 0), 3)
    hairy, lines = _draw_hair(skin, seed=1, n=12)
    assert lines.mean() > 0.01
    clean = remove_hair(hairy)
    gray = lambda x: cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(float)  # noqa: E731
    dark_before = (gray(hairy)[lines] < 60).mean()
    dark_after = (gray(clean)[lines] < 60).mean()
    assert dark_before > 0.9 and dark_after < 0.05, (dark_before, dark_after)
    # the hair-free parts are (almost) untouched
    assert np.abs(clean.astype(int) - skin)[~lines].mean() < 2
    mask = hair_mask(hairy)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert (mask[lines] > 0).mean() > 0.95


def test_remove_hair_restores_real_images(real_images):
    for seed, rgb in enumerate(real_images[:4]):
        hairy, lines = _draw_hair(rgb, seed=seed)
        clean = remove_hair(hairy)
        err_before = np.abs(hairy.astype(int) - rgb)[lines].mean()
        err_after = np.abs(clean.astype(int) - rgb)[lines].mean()
        assert err_after < 0.15 * err_before, (seed, err_before, err_after)
        assert np.abs(clean.astype(int) - rgb)[~lines].mean() < 3
        assert clean.dtype == np.uint8 and clean.shape == rgb.shape


def test_remove_hair_changes_little_without_hair():
    smooth = np.zeros((60, 80, 3), np.uint8)
    smooth[:] = (200, 160, 150)
    assert np.array_equal(remove_hair(smooth), smooth)
    with pytest.raises(ValueError):
        remove_hair(np.zeros((5, 5, 4), np.uint8))
