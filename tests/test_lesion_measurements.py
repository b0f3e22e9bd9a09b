"""core.lesion.lesion_measurements: geometry and colour descriptors on drawn shapes and on a real HAM10000 lesion."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.lesion.lesion_measurements import REFERENCE_COLOURS, measure_lesion, mm_per_pixel_from_fov

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ham_dir(request) -> Path:
    """HAM10000 folder of the real data (conftest's ``data_dir`` when present, else DATA_DIR / ../shared/data)."""
    try:
        root = Path(request.getfixturevalue("data_dir"))
    except pytest.FixtureLookupError:
        root = Path(os.environ.get("DATA_DIR") or (REPO / ".." / "shared" / "data"))
    ham = root / "ham10000"
    assert (ham / "fullres" / "images").is_dir(), f"real data not found under {root} (set DATA_DIR)"
    return ham


def disc(r: int, size: int = 400, centre: tuple[int, int] | None = None) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    cv2.circle(m, centre or (size // 2, size // 2), r, 255, thickness=-1)
    return m


def star(n_points: int = 7, r_out: int = 150, r_in: int = 60, size: int = 400) -> np.ndarray:
    pts = []
    for k in range(2 * n_points):
        r = r_out if k % 2 == 0 else r_in
        a = math.pi * k / n_points
        pts.append((size / 2 + r * math.cos(a), size / 2 + r * math.sin(a)))
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [np.round(np.array(pts)).astype(np.int32)], 255)
    return m


@pytest.mark.parametrize("r", [25, 60, 120])
def test_circle_geometry(r):
    d = measure_lesion(disc(r))
    assert d["empty"] is False
    assert d["area_px"] == pytest.approx(math.pi * r * r, rel=0.02)
    assert d["max_diameter_px"] == pytest.approx(2 * r, rel=0.02)
    assert d["perimeter_px"] == pytest.approx(2 * math.pi * r, rel=0.03)
    assert d["border_irregularity"] == pytest.approx(1.0, abs=0.05)
    assert d["asymmetry"] < 0.02
    assert d["area_mm2"] is None and d["max_diameter_mm"] is None
    assert d["lesion_fraction"] == pytest.approx(d["area_px"] / 400**2)
    assert d["centroid_xy"] == pytest.approx([200, 200], abs=0.5)


def test_bool_and_uint8_masks_agree():
    m = disc(50)
    a, b = measure_lesion(m), measure_lesion(m > 0)
    assert a == b


def test_star_is_more_irregular_than_ellipse():
    ell = np.zeros((400, 400), np.uint8)
    cv2.ellipse(ell, (200, 200), (150, 70), 25, 0, 360, 255, thickness=-1)
    e, s = measure_lesion(ell), measure_lesion(star())
    assert 1.1 < e["border_irregularity"] < 1.6  # an ellipse with axis ratio ~2 is only mildly non-compact
    assert s["border_irregularity"] > 2.0 * e["border_irregularity"]
    # Feret diameter of the ellipse is its major axis
    assert e["max_diameter_px"] == pytest.approx(300, rel=0.02)


def test_half_disc_more_asymmetric_than_disc():
    half = np.zeros((400, 400), np.uint8)
    cv2.ellipse(half, (200, 200), (120, 120), 0, 0, 180, 255, thickness=-1)
    full, h = measure_lesion(disc(120)), measure_lesion(half)
    assert full["asymmetry"] < 0.02
    # Mirrored about its symmetry axis a half-disc overlaps itself; about the other axis (parallel to the
    # flat edge through the centroid) much of it does not, so the mean is clearly positive.
    assert h["asymmetry"] > 0.05
    assert h["asymmetry"] > full["asymmetry"] + 0.05
    # An ellipse is symmetric about both principal axes even when rotated.
    ell = np.zeros((400, 400), np.uint8)
    cv2.ellipse(ell, (200, 200), (150, 60), 37, 0, 360, 255, thickness=-1)
    assert measure_lesion(ell)["asymmetry"] < 0.03


def test_l_shape_is_strongly_asymmetric():
    m = np.zeros((300, 300), np.uint8)
    m[50:250, 50:100] = 255
    m[200:250, 50:250] = 255
    assert measure_lesion(m)["asymmetry"] > 0.2


def test_largest_component_and_holes():
    m = disc(60)
    cv2.circle(m, (30, 30), 10, 255, thickness=-1)  # small speck elsewhere: ignored
    m[195:205, 195:205] = 0  # a hole (e.g. specular highlight): filled
    d = measure_lesion(m)
    assert d["area_px"] == pytest.approx(math.pi * 60 * 60, rel=0.02)
    assert d["centroid_xy"] == pytest.approx([200, 200], abs=0.5)


def test_empty_mask():
    d = measure_lesion(np.zeros((50, 80), np.uint8), rgb=np.zeros((50, 80, 3), np.uint8), mm_per_pixel=0.1)
    assert d["empty"] is True
    assert d["area_px"] == 0 and d["n_colours"] == 0 and d["colours"] == []
    assert d["area_mm2"] is None and d["max_diameter_mm"] is None
    assert d["lesion_fraction"] == 0.0
    json.dumps(d)


def test_tiny_lesions_do_not_crash():
    m = np.zeros((20, 20), bool)
    m[5, 5] = True
    d = measure_lesion(m)
    assert d["area_px"] == 1 and math.isfinite(d["border_irregularity"])
    m[5, 5:15] = True  # one-pixel-wide line
    d = measure_lesion(m)
    assert d["area_px"] == 10 and d["max_diameter_px"] == pytest.approx(9.0)
    assert math.isfinite(d["border_irregularity"]) and d["border_irregularity"] > 1


def test_mm_conversion():
    assert mm_per_pixel_from_fov(20.0, 1000) == pytest.approx(0.02)
    d = measure_lesion(disc(50), mm_per_pixel=0.02)
    assert d["max_diameter_mm"] == pytest.approx(d["max_diameter_px"] * 0.02)
    assert d["max_diameter_mm"] == pytest.approx(2.0, rel=0.02)
    assert d["area_mm2"] == pytest.approx(d["area_px"] * 0.0004)
    assert d["area_mm2"] == pytest.approx(math.pi, rel=0.02)
    assert d["perimeter_mm"] == pytest.approx(d["perimeter_px"] * 0.02)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            mm_per_pixel_from_fov(bad, 100)
        with pytest.raises(ValueError):
            measure_lesion(disc(10), mm_per_pixel=bad)
    with pytest.raises(ValueError):
        mm_per_pixel_from_fov(10.0, 0)


def _painted(colours: list[str], noise: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Skin-coloured image; lesion disc split into equal angular sectors painted with the given reference colours."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((200, 200, 3), np.uint8)
    rgb[:] = (230, 180, 160)  # skin (outside the mask: must not count)
    mask = disc(80, size=200)
    yy, xx = np.mgrid[:200, :200]
    sector = ((np.arctan2(yy - 100, xx - 100) + np.pi) / (2 * np.pi) * len(colours)).astype(int) % len(colours)
    for k, name in enumerate(colours):
        rgb[sector == k] = REFERENCE_COLOURS[name]
    jitter = rng.integers(-noise, noise + 1, size=rgb.shape)
    rgb = np.clip(rgb.astype(int) + jitter, 0, 255).astype(np.uint8)
    rgb[mask == 0] = (230, 180, 160)
    return rgb, mask


def test_colours_dark_brown_and_blue_gray():
    rgb, mask = _painted(["dark brown", "blue-gray"])
    d = measure_lesion(mask, rgb)
    assert d["colours"] == ["dark brown", "blue-gray"]
    assert d["n_colours"] == 2


def test_colours_all_six_and_threshold():
    rgb, mask = _painted(list(REFERENCE_COLOURS))
    assert measure_lesion(mask, rgb)["colours"] == list(REFERENCE_COLOURS)
    # a red patch covering < 5 % of the lesion is not counted, one covering ~10 % is
    rgb, mask = _painted(["light brown"])
    area = int((mask > 0).sum())
    ys, xs = np.nonzero(mask)
    small = rgb.copy()
    idx = np.arange(int(0.03 * area))
    small[ys[idx], xs[idx]] = REFERENCE_COLOURS["red"]
    assert measure_lesion(mask, small)["colours"] == ["light brown"]
    big = rgb.copy()
    idx = np.arange(int(0.10 * area))
    big[ys[idx], xs[idx]] = REFERENCE_COLOURS["red"]
    assert measure_lesion(mask, big)["colours"] == ["red", "light brown"]


def test_colours_need_matching_sizes():
    with pytest.raises(ValueError):
        measure_lesion(disc(10, size=50), np.zeros((40, 50, 3), np.uint8))


def test_real_ham_lesion(ham_dir):
    images = sorted((ham_dir / "fullres" / "images").glob("ISIC_*.jpg"))[:5]
    assert images
    for path in images:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(ham_dir / "fullres" / "masks" / f"{path.stem}_segmentation.png"), cv2.IMREAD_GRAYSCALE)
        h, w = mask.shape
        d = measure_lesion(mask, rgb, mm_per_pixel=mm_per_pixel_from_fov(20.0, w))
        json.dumps(d)  # plain Python types only
        assert d["empty"] is False
        assert 0.005 < d["lesion_fraction"] <= 1.0
        assert d["area_px"] <= int((mask > 127).sum()) + int(0.05 * mask.size)
        assert 0 < d["max_diameter_px"] <= math.hypot(h, w)
        # Feret diameter at least the diameter of the equal-area circle
        assert d["max_diameter_px"] >= 2 * math.sqrt(d["area_px"] / math.pi) * 0.99
        assert 0.0 <= d["asymmetry"] < 0.6
        assert 1.0 <= d["border_irregularity"] < 10.0
        assert 1 <= d["n_colours"] <= 6 and set(d["colours"]) <= set(REFERENCE_COLOURS)
        assert 0.5 < d["max_diameter_mm"] < 20.0


# ---------------------------------------------------------------- the partial total dermoscopy score
def _skin_with_disc(blur: int = 0, shape: str = "disc"):
    rgb = np.full((200, 200, 3), (215, 170, 150), np.uint8)  # light skin
    mask = np.zeros((200, 200), np.uint8)
    if shape == "disc":
        cv2.circle(mask, (100, 100), 50, 255, -1)
    else:  # a scalene triangle: mirror-asymmetric about both principal axes
        cv2.fillPoly(mask, [np.array([[30, 40], [175, 70], [60, 170]], np.int32)], 255)
    rgb[mask > 0] = (90, 55, 40)  # dark brown
    if blur:
        rgb = cv2.GaussianBlur(rgb, (0, 0), blur)
    return rgb, mask


def test_dermoscopy_score_counts_asymmetric_axes_abrupt_border_eighths_and_colours():
    sharp = measure_lesion(*reversed(_skin_with_disc()))
    assert (sharp["asymmetric_axes"], sharp["abrupt_border_segments"]) == (0, 8)
    assert sharp["dermoscopy_score"] == pytest.approx(0.1 * 8 + 0.5 * sharp["n_colours"])
    faded = measure_lesion(*reversed(_skin_with_disc(blur=12)))  # the pigment fades out over ~25 px
    assert faded["abrupt_border_segments"] == 0 and faded["dermoscopy_score"] < sharp["dermoscopy_score"]
    triangle = measure_lesion(*reversed(_skin_with_disc(shape="triangle")))
    assert triangle["asymmetric_axes"] == 2 and triangle["dermoscopy_score"] >= 1.3 * 2 + 0.5
    assert measure_lesion(_skin_with_disc()[1])["dermoscopy_score"] is None  # no image: no B or C


def test_abrupt_border_eighths_do_not_depend_on_where_the_lesion_lies_in_the_picture():
    """Half the disc's border sharp, half faded: the same count in a picture 3x as large, the lesion off centre."""
    rgb, mask = _skin_with_disc()
    faded, _ = _skin_with_disc(blur=12)
    rgb[:, 100:] = faded[:, 100:]  # the right half of the border fades out
    count = measure_lesion(mask, rgb)["abrupt_border_segments"]
    assert 2 <= count <= 6
    big_rgb = np.full((600, 600, 3), (215, 170, 150), np.uint8)
    big_mask = np.zeros((600, 600), np.uint8)
    big_rgb[40:240, 330:530], big_mask[40:240, 330:530] = rgb, mask
    assert measure_lesion(big_mask, big_rgb)["abrupt_border_segments"] == count
