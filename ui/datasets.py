"""Dataset tables and images for the pages, cached per data folder: the manifest, the split the model was trained
with, the test-split rows, image and mask files, and CAMs of dataset images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from ui.analyzers import pool
from ui.model_files import model_card



@st.cache_data(show_spinner="Reading the dataset…", max_entries=4)
def manifest(data_dir: str, sources: tuple[str, ...]) -> pd.DataFrame:
    """core.data.datasets.load_manifest of `sources` in `data_dir` (no split; see split_manifest)."""
    from core.data.datasets import load_manifest

    return load_manifest(data_dir, sources=sources)


@st.cache_data(show_spinner="Computing the lesion-grouped split…", max_entries=4)
def split_manifest(data_dir: str, sources: tuple[str, ...]) -> pd.DataFrame:
    """The manifest with the shipped model's split: the split file its model card names, else
    core.data.splits.assign_splits with the card's seed."""
    from core.data.splits import apply_split_file, assign_splits

    table = manifest(data_dir, sources)
    split = model_card().split
    return apply_split_file(table, split.file) if split.file else assign_splits(table, seed=split.seed)


def test_split(data_dir: Path, sources: tuple[str, ...]) -> pd.DataFrame:
    """The held-out test rows of split_manifest: images no model was trained or calibrated on."""
    table = split_manifest(str(data_dir), sources)
    return table[table["split"] == "test"]


def read_image_path(path: str | os.PathLike) -> np.ndarray:
    """A dataset image through the same intake path as uploads (raises core.io.intake.ImageRejected)."""
    from core.io.intake import load_image

    return load_image(Path(path).read_bytes(), Path(path).name)


def read_mask_path(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray | None:
    """A dataset lesion mask (0/255) resized to `shape` (H, W), or None when the row has none."""
    import cv2

    if not path or not Path(path).is_file():
        return None
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is not None and mask.shape != tuple(shape):
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask


@st.cache_data(show_spinner="Computing class activation maps…", max_entries=64)
def dataset_cam(path: str, class_code: str, method: str, version: str) -> np.ndarray:
    """CAM of a dataset image for `class_code` (dataset images, unlike uploads, may be cached across sessions;
    `version` = the model's, so new weights recompute)."""
    rgb = read_image_path(path)
    with pool().borrow() as analyzer:
        return analyzer.cam_for(rgb, class_code, method)
