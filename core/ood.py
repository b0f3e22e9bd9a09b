"""Out-of-distribution check: is this a dermoscopic lesion image like the training data?

Two Gaussian distances, each with its threshold fitted on the HAM10000 validation split (train.evaluate):
- features: min class-conditional Mahalanobis distance of mask-CN's pooled features in a PCA space
  (Lee et al. 2018). Catches lesions unlike any training class.
- image statistics: Mahalanobis distance of a few colour / texture statistics (Lab means and spreads, edge
  energy, saturated and dark fractions). Deep pooled features of a lesion classifier map noise, flat colours or
  documents close to the lesion classes (measured: 0 % of synthetic non-dermoscopic images flagged by the feature
  distance alone), while these statistics separate them cleanly.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

IMAGE_STAT_NAMES = ("L_mean", "a_mean", "b_mean", "L_std", "a_std", "b_std", "log_laplacian_var",
                    "log_gradient_mean", "white_fraction", "black_fraction", "log_colour_count")


def image_statistics(rgb: np.ndarray) -> np.ndarray:
    """Colour and texture statistics of one uint8 RGB image (computed at the classifier input size)."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    laplacian = cv2.Laplacian(gray, cv2.CV_32F)
    gradient = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    quantised = (rgb // 32).reshape(-1, 3).astype(np.int32)
    colours = len(np.unique(quantised[:, 0] * 64 + quantised[:, 1] * 8 + quantised[:, 2]))
    return np.array([*lab.mean(0), *lab.std(0), np.log1p(laplacian.var()), np.log1p(gradient.mean()),
                     (gray > 245).mean(), (gray < 10).mean(), np.log(colours)], dtype=np.float32)


def mahalanobis(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Min over `means` (K, d) of the Mahalanobis distance of each row of x (N, d)."""
    diff = x[:, None, :] - means[None]
    return torch.einsum("ncd,de,nce->nc", diff, precision, diff).min(dim=1).values.clamp(min=0).sqrt()


class OODDetector:
    """Both distances; tensors come from ood.safetensors, thresholds from the model card."""

    def __init__(self, tensors: dict[str, torch.Tensor], threshold: float, image_threshold: float | None = None):
        self.mean = tensors["pca_mean"]
        self.components = tensors["pca_components"]   # (K, d)
        self.class_means = tensors["class_means"]     # (C, K)
        self.precision = tensors["precision"]         # (K, K)
        self.image_mean = tensors.get("image_mean")
        self.image_precision = tensors.get("image_precision")
        self.threshold = threshold
        self.image_threshold = image_threshold

    def score(self, pooled: torch.Tensor) -> torch.Tensor:
        z = (pooled.float() - self.mean) @ self.components.T
        return mahalanobis(z, self.class_means, self.precision)

    def image_score(self, stats: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.atleast_2d(stats), dtype=torch.float32)
        return mahalanobis(x, self.image_mean[None], self.image_precision)

    def flags(self, pooled: torch.Tensor, stats: np.ndarray | None) -> np.ndarray:
        """The rule for a batch: feature distance or image-statistics distance above its threshold."""
        flagged = self.score(pooled) > self.threshold
        if stats is not None and self.image_mean is not None and self.image_threshold is not None:
            flagged |= self.image_score(stats) > self.image_threshold
        return flagged.numpy()

    def check(self, pooled: torch.Tensor, rgb_small: np.ndarray) -> tuple[float, bool, str]:
        """(feature distance, flagged, reason) for one image: ``flags`` plus the words for the clinician."""
        score = float(self.score(pooled.cpu())[0])
        if self.image_mean is not None and self.image_threshold is not None:
            image_score = float(self.image_score(image_statistics(rgb_small))[0])
            if image_score > self.image_threshold:
                return score, True, (f"Its colour and texture statistics are unlike dermoscopic images (distance "
                                     f"{image_score:.1f} > {self.image_threshold:.1f}); it may not be a dermoscopic image "
                                     "of a skin lesion. Treat the result with caution.")
        if score > self.threshold:
            return score, True, (f"The image's features are far from every lesion class seen in training "
                                 f"(distance {score:.1f} > {self.threshold:.1f}); it may not be a dermoscopic "
                                 "image of a skin lesion. Treat the result with caution.")
        return score, False, ""
