"""Classifier heads on frozen features, for the leave-one-source-out protocol (calibration.out_of_source).

Retraining the three networks once per held-out source is beyond this CPU; a multinomial logistic regression on
frozen pooled features is the cheap variant: it learns the class boundaries and priors without the held-out source.
Its backbone is either mask-CN's (which saw the held-out source's *training* images: optimistic) or EfficientNet-Lite0
with ImageNet weights (which saw no dermoscopy at all: honest). RECIPES are the levers compared.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.data.classes import NUM_CLASSES

L2_GRID = (1e-4, 1e-3, 1e-2)
RECIPES = {
    "mask_cn_head": ("pooled", False),                  # (features, source-balanced sample weights)
    "mask_cn_head_source_balanced": ("pooled", True),
    "imagenet_head": ("imagenet", False),
    "imagenet_head_source_balanced": ("imagenet", True),
}


def sample_weights(labels: np.ndarray, sources: np.ndarray, source_balanced: bool) -> np.ndarray:
    """Inverse class frequency ^ 0.5 (as mask-CN was trained), times inverse source frequency when source-balanced;
    normalised to mean 1."""
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(float)
    w = (counts.max() / np.maximum(counts, 1)) ** 0.5
    weights = w[labels]
    if source_balanced:
        names, inverse, per_source = np.unique(sources, return_inverse=True, return_counts=True)
        weights = weights * (len(sources) / (len(names) * per_source))[inverse]
    return weights / weights.mean()


@dataclass
class LinearHead:
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray     # (K, C)
    bias: np.ndarray       # (C,)

    @classmethod
    def fit(cls, x: np.ndarray, labels: np.ndarray, weights: np.ndarray, l2: float, steps: int = 100) -> "LinearHead":
        x = np.asarray(x, dtype=np.float32)
        mean, scale = x.mean(0), x.std(0) + 1e-6
        xt = torch.from_numpy((x - mean) / scale)
        yt, wt = torch.from_numpy(labels).long(), torch.from_numpy(weights).float()
        w = torch.zeros(x.shape[1], NUM_CLASSES, requires_grad=True)
        b = torch.zeros(NUM_CLASSES, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = (torch.nn.functional.cross_entropy(xt @ w + b, yt, reduction="none") * wt).mean() + l2 * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return cls(mean, scale, w.detach().numpy(), b.detach().numpy())

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.scale) @ self.weight + self.bias


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood (a 1-d search on a log grid)."""
    z, y = torch.from_numpy(logits).double(), torch.from_numpy(labels).long()
    grid = np.exp(np.linspace(np.log(0.2), np.log(5), 61))
    losses = [float(torch.nn.functional.cross_entropy(z / t, y)) for t in grid]
    return float(grid[int(np.argmin(losses))])


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_recipe(features: np.ndarray, labels: np.ndarray, sources: np.ndarray, train: np.ndarray, tune: np.ndarray,
               source_balanced: bool, criterion) -> tuple[LinearHead, float, dict]:
    """Fit on `train` rows for each L2 in L2_GRID, keep the one with the best criterion(probs, labels, sources) on
    `tune` rows, and its temperature fitted on `tune`. Returns (head, temperature, {l2: criterion})."""
    weights = sample_weights(labels[train], sources[train], source_balanced)
    scores, heads = {}, {}
    for l2 in L2_GRID:
        head = LinearHead.fit(features[train], labels[train], weights, l2)
        scores[l2] = float(criterion(softmax(head.logits(features[tune])), labels[tune], sources[tune]))
        heads[l2] = head
    best = max(scores, key=scores.get)
    temperature = fit_temperature(heads[best].logits(features[tune]), labels[tune])
    return heads[best], temperature, scores
