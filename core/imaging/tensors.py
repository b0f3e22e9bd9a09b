"""Image <-> tensor conversion shared by training and inference (one place for size and normalisation)."""
from __future__ import annotations

import numpy as np
import torch

from core.imaging.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, network_image

# Default input sizes of new training runs; a model card records the sizes its networks were trained at.
CLASSIFIER_SIZE = (150, 200)  # (H, W): the HAM10000 200x150 images at native resolution
SEGMENTER_SIZE = (192, 256)   # (H, W): divisible by 32 for the U-Net


def normalize_pixels(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float RGB in [0, 1] -> ImageNet-normalised, channels_last."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) or (B, 3, H, W) uint8 -> (B, 3, H, W) float in [0, 1]."""
    if images_uint8.shape[-1] == 3:
        images_uint8 = images_uint8.permute(0, 3, 1, 2)
    return images_uint8.float().div_(255)


def normalize_batch(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) or (B, 3, H, W) uint8 -> (B, 3, H, W) float, ImageNet-normalised, channels_last."""
    return normalize_pixels(pixels(images_uint8))


def image_to_batch(rgb: np.ndarray, size: tuple[int, int], preprocessing: Preprocessing = Preprocessing()) -> torch.Tensor:
    """One image as a normalised (1, 3, H, W) batch, made by core.imaging.preprocess.network_image."""
    return normalize_batch(torch.from_numpy(network_image(rgb, size, preprocessing))[None])
