"""The MB-DCNN data flow between the three networks, as batched tensor functions.

Training, evaluation and the Analyzer all call these, so the hand-offs (sizes, mask encoding, localisation maps)
are defined once:  image -> coarse-SN -> coarse mask -> mask-CN(image + mask) -> class probabilities + CAM
-> localisation map -> enhanced-SN(image, localisation map) -> refined mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from core.tensors import CLASSIFIER_SIZE


def mask_channel(coarse_probs: torch.Tensor, size: tuple[int, int] = CLASSIFIER_SIZE) -> torch.Tensor:
    """Coarse lesion probabilities (B,1,h,w) in [0,1] -> mask-CN's 4th channel at `size`, scaled like the
    normalised RGB channels (roughly [-2, 2])."""
    resized = F.interpolate(coarse_probs, size=size, mode="bilinear", align_corners=False)
    return (resized - 0.5) / 0.25


def mask_cn_input(images: torch.Tensor, coarse_probs: torch.Tensor) -> torch.Tensor:
    """Normalised RGB (B,3,H,W) + coarse probabilities -> (B,4,H,W)."""
    return torch.cat([images, mask_channel(coarse_probs, images.shape[-2:])], dim=1).contiguous(
        memory_format=torch.channels_last)


def localisation_map(cams: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
    """CAMs (B,C,h,w) -> the chosen class's map, ReLU'd and scaled to [0,1] per image: (B,1,h,w)."""
    chosen = cams[torch.arange(cams.shape[0]), class_index].unsqueeze(1).clamp(min=0)
    peak = chosen.flatten(1).amax(1).clamp(min=1e-6).view(-1, 1, 1, 1)
    return chosen / peak


@torch.no_grad()
def coarse_probabilities(coarse_sn, seg_images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([torch.sigmoid(coarse_sn(b)) for b in seg_images.split(batch_size)])


@torch.no_grad()
def classify_with_localisation(mask_cn, x4: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """mask-CN logits (B,C) and the top class's localisation map (B,1,h,w)."""
    logits, maps = [], []
    for batch in x4.split(batch_size):
        batch_logits, features = mask_cn.forward_with_features(batch)
        cams = mask_cn.class_activation_maps(features)
        logits.append(batch_logits)
        maps.append(localisation_map(cams, batch_logits.argmax(1)))
    return torch.cat(logits), torch.cat(maps)
