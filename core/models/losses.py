"""Segmentation and classification losses used by MB-DCNN training."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, per image then averaged. logits, target: (B, 1, H, W), target in {0, 1}."""
    probs = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    intersection = (probs * target).sum(1)
    return (1 - (2 * intersection + eps) / (probs.sum(1) + target.sum(1) + eps)).mean()


def rank_loss(logits: torch.Tensor, target: torch.Tensor, k: int = 30, margin: float = 0.3) -> torch.Tensor:
    """Xie et al. 2020: the K hardest lesion pixels (lowest p) should score `margin` above the K hardest
    background pixels (highest p). Hinge over all K x K pairs, per image; images lacking either side are skipped."""
    probs = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1) > 0.5
    losses = []
    for p, t in zip(probs, target):
        n_pos, n_neg = int(t.sum()), int((~t).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        hardest_pos = torch.topk(p[t], min(k, n_pos), largest=False).values
        hardest_neg = torch.topk(p[~t], min(k, n_neg), largest=True).values
        losses.append(F.relu(hardest_neg[None, :] - hardest_pos[:, None] + margin).mean())
    return torch.stack(losses).mean() if losses else logits.sum() * 0


def hybrid_loss(logits: torch.Tensor, target: torch.Tensor, lam: float = 0.05, k: int = 30, margin: float = 0.3) -> torch.Tensor:
    """Dice + lambda x rank, the loss of both segmentation networks."""
    return dice_loss(logits, target) + lam * rank_loss(logits, target, k, margin)


def class_weights(labels, num_classes: int, power: float = 0.5) -> torch.Tensor:
    """Inverse-frequency weights ** power, normalised to mean 1 (power 0.5 tames the 60:1 HAM imbalance)."""
    counts = torch.bincount(torch.as_tensor(labels), minlength=num_classes).float().clamp(min=1)
    weights = (counts.sum() / counts) ** power
    return weights / weights.mean()


def mixed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, partner_labels: torch.Tensor, keep: torch.Tensor,
                        weight: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Class-weighted cross-entropy against two labels mixed by `keep` (CutMix): each image counts keep x its own
    label and (1 - keep) x its partner's, normalised like F.cross_entropy's weighted mean, which it equals when
    every keep is 1."""
    own = F.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing, reduction="none")
    other = F.cross_entropy(logits, partner_labels, weight=weight, label_smoothing=label_smoothing, reduction="none")
    total = (keep * own + (1 - keep) * other).sum()
    return total / (keep * weight[labels] + (1 - keep) * weight[partner_labels]).sum()
