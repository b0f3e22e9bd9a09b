"""Skin tone of a dermoscopy image: the individual typology angle (ITA) of the skin around the lesion.

ITA = arctan((L* - 50) / b*) in degrees (Chardon et al. 1991), from the median CIE L* and b* of the non-lesion skin:
pixels outside the lesion mask dilated by a margin, excluding the dark rim of the dermatoscope and specular glare.
The usual groups (Del Bino et al. 2013): very light > 55 >= light > 41 >= intermediate > 28 >= tan > 10 >= brown > -30
>= dark. Dermoscopy's lighting and colour shift the angle, so it is a proxy for the skin tone a clinician would
record, not a measurement of it; its use here is to show how the model's figures vary with the skin it sees and how
few images of dark skin the data holds.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

ITA_GROUPS = (("very light", 55.0), ("light", 41.0), ("intermediate", 28.0), ("tan", 10.0), ("brown", -30.0),
              ("dark", -math.inf))  # (group, lower bound): a group holds angles above its bound, up to the one before
MIN_SKIN_PIXELS = 200
MARGIN_FRACTION = 0.03       # dilation of the lesion mask, as a share of the image's shorter side


def skin_pixels(rgb: np.ndarray, lesion_mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-lesion skin: outside the dilated lesion, not the dark rim, not glare."""
    if lesion_mask.shape != rgb.shape[:2]:
        lesion_mask = cv2.resize(lesion_mask.astype(np.uint8), (rgb.shape[1], rgb.shape[0]),
                                 interpolation=cv2.INTER_NEAREST)
    radius = max(1, round(MARGIN_FRACTION * min(rgb.shape[:2])))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    around = cv2.dilate((lesion_mask > 0).astype(np.uint8), kernel) > 0
    value = rgb.max(axis=2)
    return ~around & (value > 40) & (rgb.min(axis=2) < 250)


def ita_degrees(rgb: np.ndarray, lesion_mask: np.ndarray) -> float:
    """The ITA of an RGB uint8 image's non-lesion skin; NaN when fewer than MIN_SKIN_PIXELS skin pixels remain."""
    skin = skin_pixels(rgb, lesion_mask)
    if skin.sum() < MIN_SKIN_PIXELS:
        return float("nan")
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)[skin].astype(np.float64)
    lightness = np.median(lab[:, 0]) * 100 / 255      # OpenCV's 8-bit Lab: L* x 255/100, b* + 128
    yellow = np.median(lab[:, 2]) - 128
    return float(math.degrees(math.atan2(lightness - 50, yellow)))


def ita_group(angle: float) -> str:
    """The ITA group of an angle ('unknown' for NaN)."""
    if not np.isfinite(angle):
        return "unknown"
    for name, lower in ITA_GROUPS:
        if angle > lower:
            return name
    return ITA_GROUPS[-1][0]
