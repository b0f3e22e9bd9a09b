"""Image <-> tensor conversion shared by training and inference (one place for size and normalisation)."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from core.preprocess import IMAGENET_MEAN, IMAGENET_STD

CLASSIFIER_SIZE = (150, 200)  # (H, W): the HAM10000 200x150 images at native resolution
SEGMENTER_SIZE = (128, 160)   # (H, W): divisible by 32 for the U-Net


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb
    shrinking = rgb.shape[0] > h or rgb.shape[1] > w
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)


def normalize_batch(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) or (B, 3, H, W) uint8 -> (B, 3, H, W) float, ImageNet-normalised, channels_last."""
    if images_uint8.shape[-1] == 3:
        images_uint8 = images_uint8.permute(0, 3, 1, 2)
    x = images_uint8.float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def image_to_batch(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    return normalize_batch(torch.from_numpy(np.ascontiguousarray(resize_rgb(rgb, size)))[None])
