"""Out-of-distribution check: is this a dermoscopic lesion image like the training data?

Two Gaussian distances, with thresholds fitted on validation images (train.evaluate), give three levels (in /
unusual / not_dermoscopy, see OODDetector):
- features: min class-conditional Mahalanobis distance of mask-CN's pooled features in a PCA space
  (Lee et al. 2018). Catches lesions unlike any training class.
- image statistics: Mahalanobis distance of a few colour / texture statistics (Lab means and spreads, edge
  energy, saturated and dark fractions). Deep pooled features of a lesion classifier map noise, flat colours or
  documents close to the lesion classes (measured: 0 % of synthetic non-dermoscopic images flagged by the feature
  distance alone), while these statistics separate them cleanly.
"""
from __future__ import annotations

from dataclasses import dataclass

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


OOD_LEVELS = ("in", "unusual", "not_dermoscopy")
NOT_DERMOSCOPY_TEXT = ("This does not look like a dermoscopic image of a skin lesion ({why}), so no diagnosis is "
                       "shown. Upload a dermoscopy image (contact or polarised dermatoscope) of a single lesion.")
UNUSUAL_TEXT = ("This dermoscopic image is unlike the training images (feature distance {score:.1f}, above the "
                "{threshold:.1f} that {share} of validation images exceed): the diagnosis below is less reliable "
                "than the validation figures suggest.")


@dataclass(frozen=True)
class OODAssessment:
    level: str          # in | unusual | not_dermoscopy
    score: float        # the feature distance (the one number shown)
    reason: str         # one sentence for the clinician ("" when in distribution)


class OODDetector:
    """Two kinds of out-of-distribution, thresholds from the model card (fitted on validation images):
    - not_dermoscopy: image statistics beyond `image` or the feature distance beyond `feature_far`;
    - unusual: a dermoscopic image whose feature distance exceeds `feature_unusual`."""

    def __init__(self, tensors: dict[str, torch.Tensor], thresholds: dict[str, float], unusual_share: float = 0.1):
        self.mean = tensors["pca_mean"]
        self.components = tensors["pca_components"]   # (K, d)
        self.class_means = tensors["class_means"]     # (C, K)
        self.precision = tensors["precision"]         # (K, K)
        self.image_mean = tensors["image_mean"]
        self.image_precision = tensors["image_precision"]
        self.thresholds = {k: float(thresholds[k]) for k in ("image", "feature_far", "feature_unusual")}
        self.unusual_share = unusual_share

    def score(self, pooled: torch.Tensor) -> torch.Tensor:
        z = (pooled.float() - self.mean) @ self.components.T
        return mahalanobis(z, self.class_means, self.precision)

    def image_score(self, stats: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.atleast_2d(stats), dtype=torch.float32)
        return mahalanobis(x, self.image_mean[None], self.image_precision)

    def levels(self, pooled: torch.Tensor, stats: np.ndarray) -> np.ndarray:
        """The level of each image of a batch (pooled features (N, K), image statistics (N, S))."""
        feature, image = self.score(pooled).numpy(), self.image_score(stats).numpy()
        t = self.thresholds
        not_dermoscopy = (image > t["image"]) | (feature > t["feature_far"])
        return np.where(not_dermoscopy, "not_dermoscopy", np.where(feature > t["feature_unusual"], "unusual", "in"))

    def assess(self, pooled: torch.Tensor, rgb_small: np.ndarray) -> OODAssessment:
        """One image: its level, feature distance and the sentence the screens show."""
        feature = float(self.score(pooled.cpu())[0])
        image = float(self.image_score(image_statistics(rgb_small))[0])
        t = self.thresholds
        if image > t["image"]:
            return OODAssessment("not_dermoscopy", feature, NOT_DERMOSCOPY_TEXT.format(
                why="its colours and textures are unlike dermoscopy"))
        if feature > t["feature_far"]:
            return OODAssessment("not_dermoscopy", feature, NOT_DERMOSCOPY_TEXT.format(
                why="the network's features are far from every lesion it was trained on"))
        if feature > t["feature_unusual"]:
            return OODAssessment("unusual", feature, UNUSUAL_TEXT.format(
                score=feature, threshold=t["feature_unusual"], share=f"{self.unusual_share:.0%}"))
        return OODAssessment("in", feature, "")
