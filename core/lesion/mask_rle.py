"""Run-length encoding of a binary lesion mask, as stored in the batch engine's Parquet rows.

The mask (HxW, 0 = background, anything else = lesion) is read row-major; the encoding is the lengths of its
alternating runs, starting with a background run (0 when the first pixel is lesion), as space-separated integers:
"5 3 2" = 5 background, 3 lesion, 2 background pixels. With the mask's height and width it decodes exactly.
"""
from __future__ import annotations

import numpy as np


def encode_mask(mask: np.ndarray) -> str:
    """The run lengths of a 2-D mask (non-zero = lesion), background first."""
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    flat = np.concatenate([[False], mask.reshape(-1) != 0, [False]])
    changes = np.flatnonzero(flat[1:] != flat[:-1])  # indices where a lesion run starts or ends
    bounds = np.concatenate([[0], changes, [mask.size]])
    runs = np.diff(bounds)
    if len(runs) and runs[-1] == 0:
        runs = runs[:-1]  # the image ends inside a lesion run
    return " ".join(str(int(n)) for n in runs)


def decode_mask(runs: str, height: int, width: int) -> np.ndarray:
    """The HxW uint8 mask (0 / 255) of encode_mask's string; ValueError when the runs do not fill height x width."""
    height, width = int(height), int(width)  # a Parquet column with nulls reads back as float
    lengths = np.array([int(n) for n in runs.split()], dtype=np.int64)
    if (lengths < 0).any() or lengths.sum() != height * width:
        raise ValueError(f"run lengths add up to {int(lengths.sum())}, not {height}x{width}")
    values = np.zeros(len(lengths), dtype=np.uint8)
    values[1::2] = 255
    return np.repeat(values, lengths).reshape(height, width)
