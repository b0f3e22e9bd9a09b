"""Torch dataset, paired image/mask transforms and a class-balanced sampler.

Images and masks travel together through torchvision.transforms.v2 as tv_tensors.Image / tv_tensors.Mask,
so every geometric transform (flip, rotation, affine, crop, resize) moves both identically; photometric
transforms (colour jitter) and normalisation touch only the image. Masks are resized with nearest neighbour.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, WeightedRandomSampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from core.classes import CLASS_CODES, CLASS_INDEX
from core.data import DatasetError
from core.preprocess import IMAGENET_MEAN, IMAGENET_STD, remove_hair, shades_of_gray

DEFAULT_SIZE = (192, 256)  # (H, W): keeps HAM10000's 3:4 aspect ratio


def _as_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be an int or (H, W), got {size!r}")
    return (int(size[0]), int(size[1]))


def _normalise() -> list:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
    ]


def build_transforms(
    train: bool,
    size: int | Sequence[int] | None = DEFAULT_SIZE,
    *,
    rotate_degrees: float = 180.0,
    colour_jitter: bool = True,
    crop_scale: tuple[float, float] = (0.6, 1.0),
) -> v2.Compose:
    """Paired transforms: call as `image, mask = t(tv_tensors.Image(...), tv_tensors.Mask(...))` (mask optional).

    train=True: random resized crop, horizontal/vertical flips, rotation + small affine (fill 0 on both),
    colour jitter (image only). train=False: plain resize. Both end in float32 scaling + ImageNet normalisation
    of the image; the mask keeps its dtype (uint8 0/1). size=None keeps the input size.
    """
    hw = _as_size(size)
    steps: list = []
    if train:
        if hw is not None:
            steps.append(v2.RandomResizedCrop(hw, scale=crop_scale, ratio=(0.75, 1.333), antialias=True))
        steps += [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomVerticalFlip(p=0.5),
            v2.RandomAffine(degrees=rotate_degrees, translate=(0.05, 0.05), scale=(0.9, 1.1), fill=0),
        ]
        if colour_jitter:
            steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02))
    elif hw is not None:
        steps.append(v2.Resize(hw, antialias=True))
    steps += _normalise()
    return v2.Compose(steps)


def read_rgb(path: str) -> np.ndarray:
    """HxWx3 uint8 RGB from an image file; DatasetError naming the file when it cannot be read."""
    data = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if data is None:
        raise DatasetError(f"{path}: image file missing or unreadable")
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)


def read_mask(path: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """HxW uint8 0/1 mask (foreground = pixel > 127); resized (nearest) to `shape` (H, W) if it differs."""
    data = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if data is None:
        raise DatasetError(f"{path}: mask file missing or unreadable")
    if shape is not None and data.shape[:2] != tuple(shape):
        data = cv2.resize(data, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return (data > 127).astype(np.uint8)


class LesionDataset(Dataset):
    """Items: dict(image=float32 3xHxW normalised, mask=float32 1xHxW 0/1 (only when with_mask), label=int,
    image_id=str).

    manifest_df: rows of core.data.load_manifest (needs image_id, image_path, dx; mask_path when with_mask).
    transform: a paired transform from build_transforms (None: native size, just normalised).
    colour_constancy / hair_removal: apply core.preprocess.shades_of_gray / remove_hair to the uint8 image first.
    """

    def __init__(
        self,
        manifest_df: pd.DataFrame,
        transform=None,
        with_mask: bool = True,
        *,
        colour_constancy: bool = False,
        hair_removal: bool = False,
    ):
        required = ["image_id", "image_path", "dx"] + (["mask_path"] if with_mask else [])
        missing = [c for c in required if c not in manifest_df.columns]
        if missing:
            raise DatasetError(f"LesionDataset: manifest is missing column(s) {', '.join(missing)}")
        table = manifest_df.reset_index(drop=True)
        bad = ~table["dx"].isin(CLASS_CODES)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DatasetError(
                f"LesionDataset: row {row} (image {table['image_id'].iloc[row]}) has unknown label {table['dx'].iloc[row]!r}"
            )
        if with_mask:
            no_mask = table["mask_path"].fillna("").astype(str) == ""
            if no_mask.any():
                row = int(np.flatnonzero(no_mask.to_numpy())[0])
                raise DatasetError(
                    f"LesionDataset: {int(no_mask.sum())} of {len(table)} rows have no mask (first: image "
                    f"{table['image_id'].iloc[row]}, {table['image_path'].iloc[row]}); use with_mask=False"
                )
        self.table = table
        self.image_ids = table["image_id"].astype(str).tolist()
        self.image_paths = table["image_path"].astype(str).tolist()
        self.mask_paths = table["mask_path"].fillna("").astype(str).tolist() if with_mask else None
        self.labels = [CLASS_INDEX[c] for c in table["dx"]]
        self.transform = transform if transform is not None else build_transforms(False, size=None)
        self.with_mask = with_mask
        self.colour_constancy = colour_constancy
        self.hair_removal = hair_removal

    def __len__(self) -> int:
        return len(self.table)

    def load_rgb(self, index: int) -> np.ndarray:
        """The preprocessed uint8 RGB image of one row (before transforms)."""
        rgb = read_rgb(self.image_paths[index])
        if self.hair_removal:
            rgb = remove_hair(rgb)
        if self.colour_constancy:
            rgb = shades_of_gray(rgb)
        return rgb

    def __getitem__(self, index: int) -> dict:
        rgb = self.load_rgb(index)
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1))
        item = {"label": self.labels[index], "image_id": self.image_ids[index]}
        if self.with_mask:
            mask_np = read_mask(self.mask_paths[index], shape=rgb.shape[:2])
            mask = tv_tensors.Mask(torch.from_numpy(mask_np)[None])
            image, mask = self.transform(image, mask)
            item["mask"] = mask.as_subclass(torch.Tensor).to(torch.float32)
        else:
            image = self.transform(image)
        item["image"] = image.as_subclass(torch.Tensor).to(torch.float32).contiguous()
        return item


def make_balanced_sampler(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    num_samples: int | None = None,
    replacement: bool = True,
    generator: torch.Generator | None = None,
) -> WeightedRandomSampler:
    """WeightedRandomSampler drawing every class equally often (weight of a sample = 1 / its class count)."""
    labels_np = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64).ravel()
    if labels_np.size == 0:
        raise ValueError("make_balanced_sampler: no labels")
    if labels_np.min() < 0:
        raise ValueError("make_balanced_sampler: labels must be non-negative class indices")
    counts = np.bincount(labels_np)
    weights = 1.0 / counts[labels_np]
    return WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double),
        num_samples=int(num_samples or len(labels_np)),
        replacement=replacement,
        generator=generator,
    )
