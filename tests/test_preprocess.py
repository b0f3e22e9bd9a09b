"""core.imaging.preprocess: colour constancy (and field-of-view cropping) on real HAM10000 / ISIC 2017 images."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.imaging.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, network_image, shades_of_gray


def _rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def real_images(ham_manifest):
    """Eight real HAM10000 images, one or more per class."""
    rows = ham_manifest.groupby("dx", sort=True).head(1)
    rows = list(rows["image_path"]) + list(ham_manifest["image_path"].iloc[[0]])
    return [_rgb(p) for p in rows]


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


def test_jpeg_step_gives_a_full_resolution_original_and_its_small_jpeg_copy_the_same_input(data_dir):
    """HAM10000's 200x150 images are quality-75 JPEG copies of the 600x450 originals: area-resized, an original has no
    JPEG artefacts, its copy does. The JPEG step gives both the copy's artefacts, so the inputs agree far better."""
    folder = data_dir / "ham10000"
    names = sorted(p.name for p in (folder / "fullres" / "images").glob("*.jpg"))[:12]
    assert len(names) == 12

    def mean_difference(preprocessing: Preprocessing) -> float:
        return float(np.mean([np.abs(network_image(_rgb(folder / "fullres" / "images" / n), (150, 200), preprocessing)
                                     .astype(int) - network_image(_rgb(folder / "images" / n), (150, 200), preprocessing)
                                     .astype(int)).mean() for n in names]))

    without, with_step = mean_difference(Preprocessing(jpeg_quality=0)), mean_difference(Preprocessing(jpeg_quality=75))
    assert without > 2.0  # grey levels per pixel: the artefacts alone
    assert with_step < 0.55 * without, (without, with_step)


def test_preprocessing_from_card_reads_each_networks_jpeg_quality():
    entry = {"colour_constancy": True, "crop_field_of_view": True, "jpeg_quality": {"classifier": 75, "segmenter": 0}}
    assert Preprocessing.from_card(entry, "classifier") == Preprocessing(True, True, 75)
    assert Preprocessing.from_card(entry, "segmenter") == Preprocessing(True, True, 0)
    assert Preprocessing.from_card({"colour_constancy": True}, "classifier").jpeg_quality == 0  # older cards: none
