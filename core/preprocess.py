"""Pixel-level preprocessing for dermoscopic images (pure numpy / OpenCV, no torch).

- IMAGENET_MEAN / IMAGENET_STD: the normalisation every ImageNet-pretrained backbone here expects.
- shades_of_gray: Shades-of-Gray colour constancy (Finlayson & Trezzi 2004), as used for ISIC images.
- remove_hair: DullRazor-style hair removal (Lee et al. 1997): grey-scale morphological black-hat with a
  cross kernel finds thin dark lines, a threshold turns them into a mask, cv2.inpaint fills them.
"""
from __future__ import annotations

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


def shades_of_gray(rgb: np.ndarray, p: int = 6) -> np.ndarray:
    """Shades-of-Gray colour constancy.

    The illuminant of each channel is estimated as its Minkowski p-norm mean (p=1: grey world, p=inf: max-RGB);
    each channel is then rescaled so the estimated illuminant becomes neutral grey while overall brightness is
    kept. Returns a new HxWx3 uint8 image.
    """
    rgb = _check_rgb(rgb, "shades_of_gray")
    if p < 1:
        raise ValueError(f"shades_of_gray: p must be >= 1, got {p}")
    img = rgb.astype(np.float64)
    # Minkowski p-norm per channel; divide by 255 first so ** p cannot overflow for large p.
    illum = np.power(np.mean(np.power(img / 255.0, p), axis=(0, 1)), 1.0 / p)
    norm = np.sqrt(np.sum(illum ** 2))
    if norm <= 1e-12 or np.any(illum <= 1e-12):
        return rgb.copy()  # a black (or single-channel-empty) image has no illuminant to correct
    illum = illum / norm
    gain = 1.0 / (illum * np.sqrt(3.0))
    out = img * gain[None, None, :]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _default_kernel(shape: tuple[int, ...]) -> int:
    """Structuring element size scaled to the image: DullRazor's 17 px on a 600x450 image."""
    k = int(round(min(shape[0], shape[1]) * 17 / 450))
    k = max(5, k)
    return k if k % 2 == 1 else k + 1


def hair_mask(rgb: np.ndarray, kernel_size: int | None = None, threshold: int = 10) -> np.ndarray:
    """HxW uint8 0/255 mask of thin dark hair-like structures (black-hat response above `threshold`)."""
    rgb = _check_rgb(rgb, "hair_mask")
    k = kernel_size or _default_kernel(rgb.shape)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (k, k))
    blackhat = cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, kernel)
    blackhat = cv2.GaussianBlur(blackhat, (3, 3), 0)
    _, mask = cv2.threshold(blackhat, threshold, 255, cv2.THRESH_BINARY)
    # thicken slightly so inpainting also replaces the hair's soft edges
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    return mask


def remove_hair(
    rgb: np.ndarray, kernel_size: int | None = None, threshold: int = 10, inpaint_radius: int = 3
) -> np.ndarray:
    """DullRazor-style hair removal; returns a new HxWx3 uint8 image with hair pixels inpainted (Telea)."""
    rgb = _check_rgb(rgb, "remove_hair")
    mask = hair_mask(rgb, kernel_size=kernel_size, threshold=threshold)
    if not mask.any():
        return rgb.copy()
    return cv2.inpaint(rgb, mask, inpaint_radius, cv2.INPAINT_TELEA)
