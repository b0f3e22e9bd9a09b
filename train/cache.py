"""Decode a manifest's images (and masks) once at a fixed size and keep them as uint8 arrays on disk.

CPU training re-reads the same 10k small images every epoch; decoding them once makes an epoch pure compute.
Arrays are stored with np.save (allow_pickle=False) under .cache/lesionlens/.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from core.tensors import resize_mask, resize_rgb

CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "lesionlens"


def _key(paths: list[str], size: tuple[int, int], kind: str) -> str:
    digest = hashlib.sha1(("|".join(paths) + f"|{size}|{kind}").encode()).hexdigest()[:16]
    return f"{kind}_{size[0]}x{size[1]}_{len(paths)}_{digest}.npy"


def _decode_image(path: str, size: tuple[int, int]) -> np.ndarray:
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: cannot be decoded as an image")
    return resize_rgb(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size)


def _decode_mask(path: str, size: tuple[int, int]) -> np.ndarray:
    if not path:
        return np.zeros(size, np.uint8)
    mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"{path}: cannot be decoded as a mask")
    return (resize_mask(mask, size) > 127).astype(np.uint8)


def cached_array(paths: list[str], size: tuple[int, int], kind: str, use_cache: bool = True) -> np.ndarray:
    """(N, H, W, 3) uint8 images for kind="image", (N, H, W) {0,1} uint8 masks for kind="mask"."""
    file = CACHE_DIR / _key(paths, size, kind)
    if use_cache and file.is_file():
        return np.load(file, allow_pickle=False)
    decode = _decode_image if kind == "image" else _decode_mask
    array = np.stack([decode(p, size) for p in tqdm(paths, desc=f"decode {kind}s {size}", leave=False)])
    if use_cache:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        np.save(file, array, allow_pickle=False)
    return array


def load_split_arrays(manifest: pd.DataFrame, size: tuple[int, int], with_masks: bool, use_cache: bool = True):
    images = cached_array(manifest["image_path"].tolist(), size, "image", use_cache)
    masks = cached_array(manifest["mask_path"].tolist(), size, "mask", use_cache) if with_masks else None
    return images, masks
