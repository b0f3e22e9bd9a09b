"""Decode every image (and mask) of a split once, into memory-mapped uint8 arrays on disk.

A CPU epoch re-reads the same ~10k small images; decoded once, a batch is a slice of a memory map and an epoch is
pure compute. Images go through core.imaging.preprocess.network_image (field-of-view crop, area resize, colour constancy),
masks through the same crop and resize, so what training sees is exactly what inference computes.

Arrays live under .cache/lesionlens/, one .npy per (data folder, image list, size, preprocessing, kind); a change
of any of these gives a new key, so a stale cache is never read. Files are written to a temporary name and renamed,
so a killed run leaves no half-written cache behind.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from core.imaging.preprocess import Preprocessing, network_box, network_image, network_mask

CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "lesionlens"
CACHE_FORMAT = 2  # bump when the decoding itself changes


def cache_key(table: pd.DataFrame, size: tuple[int, int], preprocessing: Preprocessing) -> str:
    ids = "|".join(f"{p}:{m}" for p, m in zip(table["image_path"], table["mask_path"]))
    spec = json.dumps({"size": list(size), "pre": preprocessing.to_card(), "format": CACHE_FORMAT}, sort_keys=True)
    digest = hashlib.sha1((ids + spec).encode()).hexdigest()[:16]
    return f"{size[0]}x{size[1]}_{len(table)}_{digest}"


def _read_rgb(path: str) -> np.ndarray:
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: cannot be decoded as an image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    if not path:
        return np.zeros(shape, np.uint8)
    mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"{path}: cannot be decoded as a mask")
    if mask.shape != shape:  # a mask stored at another resolution than its image
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask


def decode(table: pd.DataFrame, size: tuple[int, int], preprocessing: Preprocessing, with_masks: bool,
           images_out: np.ndarray, masks_out: np.ndarray | None) -> None:
    for i, (image_path, mask_path) in enumerate(tqdm(list(zip(table["image_path"], table["mask_path"])),
                                                     desc=f"decode {size[0]}x{size[1]}", leave=False)):
        rgb = _read_rgb(image_path)
        box = network_box(rgb, preprocessing)
        images_out[i] = network_image(rgb, size, preprocessing, box)
        if with_masks:
            masks_out[i] = network_mask(_read_mask(mask_path, rgb.shape[:2]), size, box)


def load_arrays(table: pd.DataFrame, size: tuple[int, int], preprocessing: Preprocessing, with_masks: bool,
                use_cache: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(N,H,W,3) uint8 images and, with_masks, (N,H,W) {0,1} uint8 masks (all-zero where a row has no mask)."""
    n, (h, w) = len(table), size
    if not use_cache:
        images = np.empty((n, h, w, 3), np.uint8)
        masks = np.empty((n, h, w), np.uint8) if with_masks else None
        decode(table, size, preprocessing, with_masks, images, masks)
        return images, masks
    key = cache_key(table, size, preprocessing)
    image_file, mask_file = CACHE_DIR / f"{key}_images.npy", CACHE_DIR / f"{key}_masks.npy"
    if not image_file.is_file() or (with_masks and not mask_file.is_file()):
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp_images, tmp_masks = image_file.with_suffix(f".tmp{os.getpid()}.npy"), mask_file.with_suffix(f".tmp{os.getpid()}.npy")
        images = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.uint8, shape=(n, h, w, 3))
        masks = np.lib.format.open_memmap(tmp_masks, mode="w+", dtype=np.uint8, shape=(n, h, w)) if with_masks else None
        decode(table, size, preprocessing, with_masks, images, masks)
        images.flush()
        del images
        if with_masks:
            masks.flush()
            del masks
            os.replace(tmp_masks, mask_file)
        os.replace(tmp_images, image_file)
    images = np.load(image_file, mmap_mode="r")
    masks = np.load(mask_file, mmap_mode="r") if with_masks else None
    return images, masks
