"""The MB-DCNN data flow between the three networks, as batched tensor functions.

Training, evaluation and the Analyzer all call these, so the hand-offs (sizes, mask encoding, localisation maps)
are defined once:  image -> coarse-SN -> coarse mask -> mask-CN(image + mask) -> class probabilities + CAM
-> localisation map -> enhanced-SN(image, localisation map) -> refined mask.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.tensors import CLASSIFIER_SIZE, normalize_batch


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


def localisation_class(logits: torch.Tensor) -> torch.Tensor:
    """The class whose CAM becomes enhanced-SN's localisation map: mask-CN's top class on the raw logits of the
    unaugmented image. Training, evaluation and the Analyzer all call this one function (the displayed diagnosis may
    use test-time augmentation and a decision rule; the map enhanced-SN was trained on does not)."""
    return logits.argmax(1)


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
        maps.append(localisation_map(cams, localisation_class(batch_logits)))
    return torch.cat(logits), torch.cat(maps)


@torch.no_grad()
def run_chain(coarse_sn, mask_cn, seg_u8, cls_u8, batch_size: int = 64, device: str | torch.device = "cpu") -> dict:
    """coarse-SN -> mask-CN -> localisation map over uint8 image arrays ((N,H,W,3) at each network's size), in
    batches: {"coarse": (N,1,h,w) float16 probabilities, "logits": (N,C), "localisation": (N,1,h',w')}."""
    coarse, logits, maps = [], [], []
    for start in range(0, len(seg_u8), batch_size):
        seg = normalize_batch(torch.from_numpy(np.ascontiguousarray(seg_u8[start:start + batch_size]))).to(device)
        cls = normalize_batch(torch.from_numpy(np.ascontiguousarray(cls_u8[start:start + batch_size]))).to(device)
        probs = torch.sigmoid(coarse_sn(seg))
        batch_logits, batch_maps = classify_with_localisation(mask_cn, mask_cn_input(cls, probs))
        coarse.append(probs.half().cpu())
        logits.append(batch_logits.float().cpu())
        maps.append(batch_maps.float().cpu())
    return {"coarse": torch.cat(coarse), "logits": torch.cat(logits), "localisation": torch.cat(maps)}
