"""Geometric and colour measurements of a segmented lesion (the "ABCD" style descriptors).

Everything is computed from a binary lesion mask (and optionally the RGB image) with OpenCV / NumPy / SciPy:

* **area** - pixel count of the largest connected component of the mask, holes filled
  (a lesion is one simply connected region; specular highlights inside it are still lesion).
* **perimeter** - length of the component's outer contour after a 1-px Douglas-Peucker simplification
  (``cv2.approxPolyDP``).  The raw 8-connected pixel chain over-estimates a smooth border by ~5-8 %
  (staircase effect); the simplified polygon follows the border to within a pixel and measures a
  digitised circle at 2*pi*r to within ~1-2 %.
* **max_diameter** - maximum Feret diameter: the largest distance between two pixel centres of the lesion,
  found among the convex-hull vertices (the farthest pair of a set always lies on its hull).
* **asymmetry** - the lesion is mirrored about each of its two principal axes (eigenvectors of the second
  central moments) through the centroid; for each axis the non-overlap fraction is
  ``1 - |A intersect mirror(A)| / |A|`` (0 = perfectly symmetric, 1 = no overlap at all); the score is the mean
  over the two axes.
* **border_irregularity** - compactness index ``P^2 / (4 pi A)`` with P and A of the same contour polygon
  (1.0 for a circle, larger for elongated or ragged borders).
* **colours** - the dermoscopic colours of the ABCD rule of dermatoscopy (Stolz et al., Eur J Dermatol
  1994;4:521-527): white, red, light brown, dark brown, blue-gray and black.  Each lesion pixel is assigned to
  the nearest reference colour.  The reference values are those used by automated implementations of the rule
  (e.g. Kasmi & Mokrani, IET Image Processing 2016;10(6):448-455); the distance is Euclidean in CIE L*a*b*
  (perceptually closer to uniform than RGB: in RGB, mid-brown nevus pixels land nearer "red" than
  "light brown").  A colour counts as present when at least
  ``COLOUR_MIN_FRACTION`` (5 %) of the lesion pixels are assigned to it.  The reference values are in
  ``REFERENCE_COLOURS`` below.  They assume a roughly white-balanced image; apply colour constancy
  (core.imaging.preprocess.shades_of_gray) first for best results.

* **dermoscopy score** - a partial total dermoscopy score (TDS) of the ABCD rule of dermatoscopy (Stolz et al.
  1994: TDS = 1.3 A + 0.1 B + 0.5 C + 0.5 D) from the measurements above; D (differential structures: network,
  dots, globules, streaks, structureless areas) is not measured, so the score is 1.3 A + 0.1 B + 0.5 C (0.5 to 8.9)
  and the rule's 4.75 / 5.45 cut-offs, which include D, do not apply to it. A (0-2) = the principal axes whose mirror
  non-overlap exceeds ``ASYMMETRIC_AXIS`` (shape only; the rule also counts colour and structure asymmetry); B (0-8)
  = the eighths of the border (45° sectors around the centroid) where the lightness changes abruptly: the step of
  CIE L* across a narrow band of the border (``BORDER_NARROW`` of the diameter each side) is at least
  ``ABRUPT_RATIO`` of the step across a band four times wider, with that wide step at least ``MIN_BORDER_STEP_L``
  (a gradual fade spreads the change over the wide band; 5 % because the mask's own uncertainty and the image's blur
  spread even a sharp edge over a few pixels); C (1-6) = the number of dermoscopic colours (at least 1).
  Its melanoma AUC on the test sets is in docs/followup.md (``python -m calibration.dermoscopy_score_auc``).

All returned values are plain Python ``int`` / ``float`` / ``str`` / ``bool`` / ``None`` (JSON-serialisable).
"""
from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np
from scipy.spatial.distance import pdist

__all__ = [
    "COLOUR_MIN_FRACTION",
    "dermoscopy_score",
    "REFERENCE_COLOURS",
    "describe_measurements",
    "measure_lesion",
    "mm_per_pixel_from_fov",
]

#: Reference RGB values (0-255) of the six dermoscopic colours of the ABCD rule, in the order they are reported.
#: Normalised values (white 1,1,1; red 0.8,0.2,0.2; light brown 0.6,0.4,0; dark brown 0.2,0,0;
#: blue-gray 0.2,0.6,0.6; black 0,0,0) scaled by 255.
REFERENCE_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "red": (204, 51, 51),
    "light brown": (153, 102, 0),
    "dark brown": (51, 0, 0),
    "blue-gray": (51, 153, 153),
    "black": (0, 0, 0),
}
#: A colour is "present" when at least this fraction of the lesion pixels is nearest to it.
COLOUR_MIN_FRACTION = 0.05

#: Dermoscopy score (see the module docstring); chosen before measuring its AUC, not fitted.
ASYMMETRIC_AXIS = 0.10
BORDER_NARROW = 0.05
ABRUPT_RATIO = 0.5
MIN_BORDER_STEP_L = 5.0
TDS_WEIGHTS = {"A": 1.3, "B": 0.1, "C": 0.5}

_SIMPLIFY_EPSILON_PX = 1.0
_COLOUR_CHUNK = 1 << 19


def mm_per_pixel_from_fov(field_of_view_mm: float, image_width_px: int) -> float:
    """Pixel size in mm for an image whose full width spans ``field_of_view_mm`` millimetres."""
    fov = float(field_of_view_mm)
    width = int(image_width_px)
    if not math.isfinite(fov) or fov <= 0:
        raise ValueError(f"field of view must be a positive number of millimetres, got {field_of_view_mm!r}")
    if width <= 0:
        raise ValueError(f"image width must be a positive number of pixels, got {image_width_px!r}")
    return fov / width


def _binary(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.ndim != 2:
        raise ValueError(f"mask must be a 2-D array (H x W), got shape {m.shape}")
    if m.dtype == bool:
        return m
    if m.size and float(m.max()) > 1:
        return m >= 128  # 0/255 masks (tolerates light resampling noise)
    return m > 0  # 0/1 masks


def _largest_component_filled(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Largest 8-connected component with holes filled, plus its outer contour (N x 1 x 2, int32)."""
    u8 = binary.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(u8, connectivity=8)
    if n <= 1:
        return np.zeros_like(binary, dtype=bool), None
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = (labels == biggest).astype(np.uint8)
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=lambda c: len(c))
    filled = np.zeros_like(comp)
    cv2.drawContours(filled, [contour], -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool), contour


def _max_feret(contour: np.ndarray) -> float:
    hull = cv2.convexHull(contour).reshape(-1, 2).astype(np.float64)
    if len(hull) < 2:
        return 0.0
    return float(pdist(hull).max())


def _asymmetry(region: np.ndarray) -> list[float]:
    """The mirror non-overlap about each of the two principal axes."""
    area = int(region.sum())
    if area == 0:
        return [0.0, 0.0]
    m = cv2.moments(region.astype(np.uint8), binaryImage=True)
    cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
    cov = np.array([[m["mu20"], m["mu11"]], [m["mu11"], m["mu02"]]], dtype=np.float64) / m["m00"]
    _, vecs = np.linalg.eigh(cov)  # columns: principal axes (unit vectors, x/y)
    h, w = region.shape
    u8 = region.astype(np.uint8)
    c = np.array([cx, cy])
    scores = []
    for k in range(2):
        u = vecs[:, k]
        reflect = 2.0 * np.outer(u, u) - np.eye(2)  # mirror about the line through c along u
        shift = c - reflect @ c
        matrix = np.hstack([reflect, shift[:, None]])
        # A reflection is its own inverse, so sampling the mask at reflect(q) gives mirror(A) at q.
        mirrored = cv2.warpAffine(
            u8, matrix, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT, borderValue=0,
        )
        overlap = int(np.count_nonzero(mirrored & u8))
        scores.append(float(np.clip(1.0 - overlap / area, 0.0, 1.0)))
    return scores


def _abrupt_border_segments(rgb: np.ndarray, region: np.ndarray, diameter: float) -> int:
    """B of the ABCD rule: the 45° border sectors with an abrupt change of lightness (module docstring)."""
    narrow = max(1.0, BORDER_NARROW * diameter)
    ys, xs = np.nonzero(region)
    cy, cx = ys.mean(), xs.mean()
    # Only pixels within the wider band (4 x narrow) of the border count: distances are computed on the lesion's
    # bounding box grown by that band (the same distances as on the whole image: every path to the nearest border
    # pixel stays inside it), lightness and sector on the band's pixels alone, each sector's mean by one bincount.
    margin = int(np.ceil(4 * narrow)) + 2
    y0, x0 = max(0, ys.min() - margin), max(0, xs.min() - margin)
    y1, x1 = min(region.shape[0], ys.max() + margin + 1), min(region.shape[1], xs.max() + margin + 1)
    region, cy, cx = region[y0:y1, x0:x1], cy - y0, cx - x0
    u8 = region.astype(np.uint8)
    inside = cv2.distanceTransform(u8, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - u8, cv2.DIST_L2, 3)
    to_border = np.where(region, inside, outside)
    by, bx = np.nonzero(to_border <= 4 * narrow)
    pixels = np.asarray(rgb)[y0:y1, x0:x1, :3][by, bx]
    lightness = _to_lab(pixels.astype(np.float32) / 255.0)[:, 0]
    sector = ((np.degrees(np.arctan2(by - cy, bx - cx)) + 360.0) % 360.0 // 45).astype(int)
    is_inner, distance = region[by, bx], to_border[by, bx]

    def sector_means(chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = np.bincount(sector[chosen], minlength=8)
        return np.bincount(sector[chosen], weights=lightness[chosen], minlength=8) / np.maximum(counts, 1), counts > 0

    steps, present = [], np.ones(8, dtype=bool)
    for width in (narrow, 4 * narrow):
        (inner, has_inner), (outer, has_outer) = (sector_means(is_inner & (distance <= width)),
                                                  sector_means(~is_inner & (distance <= width)))
        steps.append(outer - inner)
        present &= has_inner & has_outer
    abrupt = present & (steps[1] >= MIN_BORDER_STEP_L) & (steps[0] >= ABRUPT_RATIO * steps[1])
    return int(abrupt.sum())


def dermoscopy_score(asymmetric_axes: int, abrupt_border_segments: int, n_colours: int) -> float:
    """The partial total dermoscopy score 1.3 A + 0.1 B + 0.5 C (C at least 1; no D: see the module docstring)."""
    return round(TDS_WEIGHTS["A"] * asymmetric_axes + TDS_WEIGHTS["B"] * abrupt_border_segments
                 + TDS_WEIGHTS["C"] * max(1, n_colours), 2)


def _to_lab(unit_rgb: np.ndarray) -> np.ndarray:
    """N x 3 float RGB in [0, 1] -> N x 3 CIE L*a*b* (D65, L in 0..100) as float64."""
    lab = cv2.cvtColor(np.ascontiguousarray(unit_rgb, dtype=np.float32).reshape(-1, 1, 3), cv2.COLOR_RGB2Lab)
    return lab.reshape(-1, 3).astype(np.float64)


@lru_cache(maxsize=1)
def _reference_lab() -> np.ndarray:
    return _to_lab(np.array(list(REFERENCE_COLOURS.values()), dtype=np.float32) / 255.0)


def _colours(rgb: np.ndarray, region: np.ndarray) -> list[str]:
    img = np.asarray(rgb)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb must be H x W x 3, got shape {img.shape}")
    if img.shape[:2] != region.shape:
        raise ValueError(f"rgb size {img.shape[:2]} does not match mask size {region.shape}")
    pixels = img[region]
    if len(pixels) == 0:
        return []
    if pixels.dtype != np.uint8:
        arr = pixels.astype(np.float64)
        if arr.max() <= 1.0:
            arr = arr * 255.0
        pixels = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    # Classify each distinct colour once (exact, and fast: real lesions have far fewer distinct colours
    # than pixels), then weight by how many pixels have it.
    packed = (pixels[:, 0].astype(np.uint32) << 16) | (pixels[:, 1].astype(np.uint32) << 8) | pixels[:, 2]
    distinct, counts = np.unique(packed, return_counts=True)
    rgb_distinct = np.stack([(distinct >> 16) & 255, (distinct >> 8) & 255, distinct & 255], axis=1)
    refs = _reference_lab()
    ref_sq = (refs**2).sum(axis=1)
    nearest = np.empty(len(distinct), dtype=np.int64)
    for start in range(0, len(distinct), _COLOUR_CHUNK):  # bounded memory even for noise-like images
        lab = _to_lab(rgb_distinct[start : start + _COLOUR_CHUNK].astype(np.float32) / 255.0)
        # |l - r|^2 = |l|^2 - 2 l.r + |r|^2; |l|^2 is the same for every r, so it does not change the argmin
        nearest[start : start + _COLOUR_CHUNK] = np.argmin(ref_sq[None, :] - 2.0 * lab @ refs.T, axis=1)
    names = list(REFERENCE_COLOURS)
    fractions = np.bincount(nearest, weights=counts, minlength=len(names)) / len(pixels)
    return [n for n, f in zip(names, fractions) if f >= COLOUR_MIN_FRACTION]


def _empty_result(shape: tuple[int, int]) -> dict:
    return {
        "empty": True,
        "area_px": 0,
        "area_mm2": None,
        "perimeter_px": 0.0,
        "perimeter_mm": None,
        "max_diameter_px": 0.0,
        "max_diameter_mm": None,
        "asymmetry": 0.0,
        "asymmetric_axes": 0,
        "abrupt_border_segments": None,
        "dermoscopy_score": None,
        "border_irregularity": 0.0,
        "n_colours": 0,
        "colours": [],
        "lesion_fraction": 0.0,
        "centroid_xy": None,
        "image_size_hw": [int(shape[0]), int(shape[1])],
        "mm_per_pixel": None,
    }


def measure_lesion(mask: np.ndarray, rgb: np.ndarray | None = None, mm_per_pixel: float | None = None) -> dict:
    """Measure the largest lesion region of ``mask`` (H x W, bool or uint8 0/255).

    Returns a dict with: ``empty`` (bool), ``area_px`` (int), ``area_mm2`` (float | None), ``perimeter_px``,
    ``perimeter_mm``, ``max_diameter_px``, ``max_diameter_mm`` (None without a scale), ``asymmetry`` (0..1),
    ``border_irregularity`` (compactness, 1.0 = circle), ``n_colours`` (int) and ``colours`` (names, see
    ``REFERENCE_COLOURS``; empty list when ``rgb`` is None), ``lesion_fraction`` (area / image area),
    ``centroid_xy`` ([x, y] pixels), ``image_size_hw`` and ``mm_per_pixel`` (echoed).
    An empty mask returns zeros / None with ``empty: True``.
    """
    binary = _binary(mask)
    if mm_per_pixel is not None:
        mm_per_pixel = float(mm_per_pixel)
        if not math.isfinite(mm_per_pixel) or mm_per_pixel <= 0:
            raise ValueError(f"mm_per_pixel must be a positive number, got {mm_per_pixel!r}")
    region, contour = _largest_component_filled(binary)
    if contour is None:
        return _empty_result(binary.shape)

    area = int(np.count_nonzero(region))
    poly = cv2.approxPolyDP(contour, _SIMPLIFY_EPSILON_PX, closed=True)
    perimeter = float(cv2.arcLength(poly, closed=True))
    poly_area = float(cv2.contourArea(poly))
    if len(contour) < 3 or poly_area <= 0.0:
        # Degenerate (a dot or a one-pixel-wide line): treat the pixel squares as the shape.
        perimeter = float(cv2.arcLength(contour, closed=True)) + 4.0 if len(contour) > 1 else 4.0
        poly_area = float(area)
    irregularity = perimeter**2 / (4.0 * math.pi * poly_area)
    max_d = _max_feret(contour)
    m = cv2.moments(region.astype(np.uint8), binaryImage=True)
    centroid = [float(m["m10"] / m["m00"]), float(m["m01"] / m["m00"])]
    colours = _colours(rgb, region) if rgb is not None else []
    axes = _asymmetry(region)
    asymmetric = sum(score > ASYMMETRIC_AXIS for score in axes)
    abrupt = _abrupt_border_segments(rgb, region, max_d) if rgb is not None else None
    scale = mm_per_pixel

    return {
        "empty": False,
        "area_px": area,
        "area_mm2": float(area * scale**2) if scale else None,
        "perimeter_px": perimeter,
        "perimeter_mm": float(perimeter * scale) if scale else None,
        "max_diameter_px": max_d,
        "max_diameter_mm": float(max_d * scale) if scale else None,
        "asymmetry": float(np.mean(axes)),
        "asymmetric_axes": asymmetric,
        "abrupt_border_segments": abrupt,
        "dermoscopy_score": None if abrupt is None else dermoscopy_score(asymmetric, abrupt, len(colours)),
        "border_irregularity": float(irregularity),
        "n_colours": len(colours),
        "colours": colours,
        "lesion_fraction": float(area / binary.size),
        "centroid_xy": centroid,
        "image_size_hw": [int(binary.shape[0]), int(binary.shape[1])],
        "mm_per_pixel": scale,
    }


def describe_measurements(m: dict, score: bool = False) -> list[tuple[str, str]]:
    """``measure_lesion`` output as (name, value) rows in words: what was measured, not what it may mean. The one
    wording of the dashboard table and the PDF report (which reduces it to ASCII). ``score``: with the dermoscopy
    score row (the dashboard; the one-page PDF report has no room for it)."""
    if not m or m.get("empty"):
        return [("Lesion", "no lesion found in the mask: nothing to measure")]

    def size(px: float, mm: float | None, unit: str = "mm", px_format: str = "{:,.0f}") -> str:
        return px_format.format(px) + " px" + (f" · {mm:,.1f} {unit}" if mm is not None else "")

    colours = m.get("colours") or []
    scale = m.get("mm_per_pixel")
    return [
        ("Area", size(m["area_px"], m.get("area_mm2"), "mm²")),
        ("Maximum diameter (Feret)", size(m["max_diameter_px"], m.get("max_diameter_mm"))),
        ("Perimeter", size(m["perimeter_px"], m.get("perimeter_mm"))),
        ("Mirror asymmetry", f"{m['asymmetry']:.0%} of the lesion area does not overlap its mirror image "
                             "(mean over its two principal axes; 0 % = mirror-symmetric shape)"),
        ("Border irregularity", f"{m['border_irregularity']:.2f} (perimeter² / (4π × area); 1.00 = circle)"),
        ("Dermoscopic colours", f"{len(colours)}: {', '.join(colours)}" if colours else "none counted"),
        *([("Dermoscopy score (partial TDS)", describe_score(m))]
          if score and m.get("dermoscopy_score") is not None else []),
        ("Lesion fraction of image", f"{m['lesion_fraction']:.0%}"),
        ("Scale", f"{float(scale):.4f} mm per pixel" if scale else "not calibrated (pixel units only)"),
    ]


def describe_score(m: dict) -> str:
    """The dermoscopy score with what it is computed from, in words."""
    return (f"{m['dermoscopy_score']:.1f} = 1.3 x A {m['asymmetric_axes']} + 0.1 x B {m['abrupt_border_segments']}"
            f" + 0.5 x C {max(1, m['n_colours'])} (structures not counted)")
