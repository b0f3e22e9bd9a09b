"""Test-time augmentation: the 8 dihedral views of an image batch (exact: flips and transposes, no interpolation).

View k (0-7) = optional transpose (k >= 4), then a horizontal flip (k & 1) and a vertical flip (k & 2). View 0 is
the identity; views 0-3 keep the image's shape, views 4-7 are transposed (H and W swapped), which a fully
convolutional network with global pooling handles as is. `unview` maps a dense output back onto the input grid.
"""
from __future__ import annotations

import torch

ALL_VIEWS = tuple(range(8))
FLIP_VIEWS = (0, 1, 2, 3)


def view(x: torch.Tensor, k: int) -> torch.Tensor:
    """View k of a (B, C, H, W) tensor."""
    if k >= 4:
        x = x.transpose(-1, -2)
    dims = [d for d, bit in ((-1, 1), (-2, 2)) if k & bit]
    return torch.flip(x, dims) if dims else x


def unview(y: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of `view`: a dense output computed on view k, mapped back onto the original grid."""
    dims = [d for d, bit in ((-1, 1), (-2, 2)) if k & bit]
    if dims:
        y = torch.flip(y, dims)
    return y.transpose(-1, -2) if k >= 4 else y


def views_for(count: int) -> tuple[int, ...]:
    """1 = identity only, 4 = the flips, 8 = the whole dihedral group."""
    if count not in (1, 4, 8):
        raise ValueError(f"test-time augmentation takes 1, 4 or 8 views, not {count}")
    return ALL_VIEWS[:count]
