"""The MB-DCNN data flow between the three networks, as batched tensor functions.

Training, evaluation and the Analyzer all call these, so the hand-offs (sizes, mask encoding, localisation maps)
are defined once:  image -> coarse-SN -> coarse mask -> mask-CN(image + mask) -> class probabilities + CAM
-> localisation map -> enhanced-SN(image, localisation map) -> refined mask.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.imaging.tensors import CLASSIFIER_SIZE, normalize_batch
from core.imaging.tta import unview, view


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
        seg = normalize_batch(torch.from_numpy(np.array(seg_u8[start:start + batch_size]))).to(device)
        cls = normalize_batch(torch.from_numpy(np.array(cls_u8[start:start + batch_size]))).to(device)
        probs = torch.sigmoid(coarse_sn(seg))
        batch_logits, batch_maps = classify_with_localisation(mask_cn, mask_cn_input(cls, probs))
        coarse.append(probs.half().cpu())
        logits.append(batch_logits.float().cpu())
        maps.append(batch_maps.float().cpu())
    return {"coarse": torch.cat(coarse), "logits": torch.cat(logits), "localisation": torch.cat(maps)}


def view_groups(views: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Views batched together: those that keep the image's shape, and the transposed ones."""
    return [g for g in (tuple(k for k in views if k < 4), tuple(k for k in views if k >= 4)) if g]


def _segment(network, seg_x: torch.Tensor, views: tuple[int, ...], extra: torch.Tensor | None = None) -> torch.Tensor:
    """Lesion probabilities (B,1,H,W) averaged over `views` (each mapped back onto the input grid)."""
    total = 0
    for group in view_groups(views):
        x = torch.cat([view(seg_x, k) for k in group])
        args = (x,) if extra is None else (x, torch.cat([view(extra, k) for k in group]))
        probs = torch.sigmoid(network(*args).float()).split(seg_x.shape[0])
        total = total + sum(unview(p, k) for p, k in zip(probs, group))
    return total / len(views)


def mbdcnn_forward(coarse_sn, mask_cn, enhanced_sn, seg_x: torch.Tensor, cls_x: torch.Tensor,
                   cls_views: tuple[int, ...] = (0,), seg_views: tuple[int, ...] = (0,), with_enhanced: bool = True) -> dict:
    """The whole MB-DCNN chain on normalised batches (the Analyzer's and the evaluation's one forward pass).

    coarse-SN (averaged over seg_views) -> mask-CN on every view in cls_views of (image, coarse mask) ->
    localisation map of view 0 -> enhanced-SN (averaged over seg_views; skipped, None, when not with_enhanced).
    Both view tuples start with the identity, 0. With seg_views = (0,) (no flip TTA) every hand-off is exactly the
    one training used (train.stages: core.models.mbdcnn.run_chain).
    Returns coarse / enhanced probabilities (B,1,H,W), logits per view (V,B,C) in cls_views order, view 0's
    pooled features (B,K), class activation maps (B,C,h,w), mask-CN input x4 (B,4,H,W) and localisation map."""
    if cls_views[0] != 0 or seg_views[0] != 0:
        raise ValueError("cls_views and seg_views must start with the identity view 0")
    coarse = _segment(coarse_sn, seg_x, seg_views)
    channel = F.interpolate(coarse, size=cls_x.shape[-2:], mode="bilinear", align_corners=False)
    b = cls_x.shape[0]
    logits_by_view: dict[int, torch.Tensor] = {}
    for group in view_groups(cls_views):
        x4 = mask_cn_input(torch.cat([view(cls_x, k) for k in group]), torch.cat([view(channel, k) for k in group]))
        if group[0] == 0:
            logits, features = mask_cn.forward_with_features(x4)
            x4_identity, features = x4[:b], features[:b]
        else:
            logits = mask_cn(x4)
        logits_by_view.update(zip(group, logits.float().split(b)))
    class_maps = mask_cn.class_activation_maps(features)
    loc = localisation_map(class_maps, localisation_class(logits_by_view[0]))
    enhanced = _segment(enhanced_sn, seg_x, seg_views, extra=loc) if with_enhanced else None
    return {"coarse": coarse, "enhanced": enhanced, "logits": torch.stack([logits_by_view[k] for k in cls_views]),
            "pooled": mask_cn.net.forward_head(features, pre_logits=True).float(), "class_maps": class_maps,
            "x4": x4_identity, "localisation": loc}
