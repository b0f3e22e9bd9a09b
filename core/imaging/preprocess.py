"""Pixel-level preprocessing for dermoscopic images (pure numpy / OpenCV, no torch).

- IMAGENET_MEAN / IMAGENET_STD: the normalisation every ImageNet-pretrained backbone here expects.
- shades_of_gray: Shades-of-Gray colour constancy (Finlayson & Trezzi 2004, p=6 as the ISIC 2019 winners used).
- field_of_view_box: the lit region of a dermatoscope image whose circular field of view leaves dark corners.
- Preprocessing + network_image: the one way every network input is made, in training (train.cache) and in
  inference (core.analysis.inference): crop to the field of view, area-resize to the network size, optionally re-encode as
  JPEG, then colour constancy. Resizing by area from whatever resolution arrives, and correcting colour after
  resizing, makes a 600x450 original and its 200x150 copy give the same network input up to JPEG noise; the JPEG
  step removes that noise too (see Preprocessing.jpeg_quality).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _check_rgb(rgb: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{name}: expected an HxWx3 RGB image, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8, got {rgb.dtype}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"{name}: empty image {rgb.shape}")
    return np.ascontiguousarray(rgb)


def as_rgb_u8(image: np.ndarray) -> np.ndarray:
    """Any displayable image array -> a contiguous HxWx3 uint8 RGB copy-or-view: grey is repeated over 3 channels, an
    alpha channel dropped, floats in [0, 1] (or [0, 255]) rounded into 0..255. ValueError for other shapes."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {img.shape}")
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        values = img.astype(np.float64)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        img = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def shades_of_gray(rgb: np.ndarray, p: int = 6) -> np.ndarray:
    """Shades-of-Gray colour constancy.

    The illuminant of each channel is estimated as its Minkowski p-norm mean (p=1: grey world, p=inf: max-RGB);
    each channel is then rescaled so the estimated illuminant becomes neutral grey while overall brightness is
    kept. Returns a new HxWx3 uint8 image.
    """
    rgb = _check_rgb(rgb, "shades_of_gray")
    if p < 1:
        raise ValueError(f"shades_of_gray: p must be >= 1, got {p}")
    # uint8 has 256 values: the p-norm mean from each channel's histogram (divided by 255 first so ** p cannot
    # overflow), the gain applied through a lookup table: the same numbers as computing on every pixel, faster
    levels = np.arange(256, dtype=np.float64)
    counts = np.stack([np.bincount(rgb[:, :, c].ravel(), minlength=256) for c in range(3)]).astype(np.float64)
    illum = np.power(counts @ np.power(levels / 255.0, p) / counts[0].sum(), 1.0 / p)
    norm = np.sqrt(np.sum(illum ** 2))
    if norm <= 1e-12 or np.any(illum <= 1e-12):
        return rgb.copy()  # a black (or single-channel-empty) image has no illuminant to correct
    illum = illum / norm
    gain = 1.0 / (illum * np.sqrt(3.0))
    tables = np.clip(np.rint(levels[:, None] * gain[None, :]), 0, 255).astype(np.uint8)  # (256, 3)
    return np.ascontiguousarray(np.stack([tables[rgb[:, :, c], c] for c in range(3)], axis=2))


# ---------------------------------------------------------------- field of view
FOV_DARK_LEVEL = 25          # max-channel value below which a pixel is unlit (a dermatoscope's black surround)
FOV_MIN_BORDER_DARK = 0.3    # crop only when at least this share of the image border is unlit (a vignette)
FOV_PROFILE_SHARE = 0.5      # keep rows / columns lit at least this share of the most-lit row / column
FOV_MIN_KEEP = 0.4           # never keep less than this share of either side

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open)


def field_of_view_box(rgb: np.ndarray) -> Box:
    """The lit region of a dermoscopic image, or the whole image when it has no dark surround.

    Many dermatoscopes leave a black circular vignette; resized as is, a lesion's scale and the black share depend on
    the device. Rows and columns lit over FOV_PROFILE_SHARE of the best-lit row / column are kept (for a lit disk:
    the central ~87 % of its diameter), so little black remains and little skin is lost.
    """
    rgb = _check_rgb(rgb, "field_of_view_box")
    h, w = rgb.shape[:2]
    whole = (0, h, 0, w)
    scale = min(1.0, 160 / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    lit = cv2.medianBlur(small.max(axis=2), 3) > FOV_DARK_LEVEL
    border = np.concatenate([lit[0], lit[-1], lit[:, 0], lit[:, -1]])
    if (~border).mean() < FOV_MIN_BORDER_DARK or lit.mean() < 0.2:
        return whole
    rows, cols = lit.mean(axis=1), lit.mean(axis=0)
    keep_rows = np.flatnonzero(rows >= FOV_PROFILE_SHARE * rows.max())
    keep_cols = np.flatnonzero(cols >= FOV_PROFILE_SHARE * cols.max())
    y0, y1 = int(keep_rows[0] / scale), int(np.ceil((keep_rows[-1] + 1) / scale))
    x0, x1 = int(keep_cols[0] / scale), int(np.ceil((keep_cols[-1] + 1) / scale))
    y0, y1, x0, x1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
    if (y1 - y0) < FOV_MIN_KEEP * h or (x1 - x0) < FOV_MIN_KEEP * w:
        return whole
    return (y0, y1, x0, x1)


# ---------------------------------------------------------------- the network input
@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a network input; recorded in the model card and applied the same way at inference."""
    colour_constancy: bool = True      # Shades of Gray, p = 6, after resizing
    crop_field_of_view: bool = True    # crop to field_of_view_box before resizing
    # Re-encode the resized image as JPEG at this quality, in memory (0 = off). HAM10000's 200x150 images are
    # quality-75 JPEGs, so a network trained on them has only seen images with JPEG artefacts at its input
    # resolution; a full-resolution photo, area-resized, has none, and that alone changed the top class of 17 % of
    # the full-resolution HAM10000 originals against their 200x150 copies. With the step, both get the same input.
    jpeg_quality: int = 0

    def to_card(self) -> dict:
        return asdict(self)

    @classmethod
    def from_card(cls, entry: dict | None, network: str = "classifier") -> "Preprocessing":
        """The card's preprocessing entry for the classifier's or the segmenters' input (the card's jpeg_quality
        maps network -> quality); cards written before these options existed used none of them."""
        entry = entry or {}
        jpeg = entry.get("jpeg_quality") or {}
        return cls(colour_constancy=bool(entry.get("colour_constancy", False)),
                   crop_field_of_view=bool(entry.get("crop_field_of_view", False)),
                   jpeg_quality=int(jpeg.get(network, 0) if isinstance(jpeg, dict) else jpeg))


def network_box(rgb: np.ndarray, preprocessing: Preprocessing) -> Box:
    return field_of_view_box(rgb) if preprocessing.crop_field_of_view else (0, rgb.shape[0], 0, rgb.shape[1])


def network_image(rgb: np.ndarray, size: tuple[int, int], preprocessing: Preprocessing, box: Box | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB (any size) -> the (size) uint8 image a network sees: crop, area resize, colour constancy."""
    rgb = _check_rgb(rgb, "network_image")
    y0, y1, x0, x1 = box if box is not None else network_box(rgb, preprocessing)
    cropped = rgb[y0:y1, x0:x1]
    resized = cropped if cropped.shape[:2] == tuple(size) else cv2.resize(
        cropped, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    if preprocessing.jpeg_quality:
        resized = jpeg_round_trip(resized, preprocessing.jpeg_quality)
    return shades_of_gray(resized) if preprocessing.colour_constancy else np.ascontiguousarray(resized)


def jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """The image as a JPEG of this quality would decode (encoded and decoded in memory; nothing touches disk)."""
    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("jpeg_round_trip: OpenCV could not encode the image")
    return np.ascontiguousarray(cv2.imdecode(buffer, cv2.IMREAD_COLOR)[:, :, ::-1])


def network_mask(mask: np.ndarray, size: tuple[int, int], box: Box) -> np.ndarray:
    """A 0/255 (or 0/1) lesion mask cropped like its image and resized to `size`: {0,1} uint8."""
    y0, y1, x0, x1 = box
    cropped = np.ascontiguousarray(mask[y0:y1, x0:x1])
    resized = cv2.resize(cropped.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return (resized > (127.5 if mask.max() > 1 else 0.5)).astype(np.uint8)


def mask_to_image(probs: np.ndarray, box: Box, shape: tuple[int, int]) -> np.ndarray:
    """Network-size lesion probabilities -> probabilities over the whole input image (0 outside the crop box)."""
    y0, y1, x0, x1 = box
    full = np.zeros(shape, np.float32)
    full[y0:y1, x0:x1] = cv2.resize(probs.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return full
