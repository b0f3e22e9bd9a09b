"""The dermoscopy check: is an upload a dermoscopy image, a clinical (camera) photo of skin, or not skin at all?

A multinomial logistic regression on the generic ImageNet features that the OOD check already computes
(core.decisions.ood.imagenet_backbone on the classifier's input), so it costs one 1280 x 3 product per image. Fitted by
`python -m calibration.fit_dermoscopy_check` on dermoscopy (HAM10000 + ISIC 2017 train split), real clinical photographs
of skin (DermNet, with the watermark corner cropped away) and real photographs that are not skin (scikit-image /
scikit-learn samples); the tensors are in weights/dermoscopy_check.safetensors, the threshold and its measured
refusal rates in the model card's `dermoscopy_check`.

An image is refused when P(dermoscopy) is below the card's threshold, chosen on dermoscopy scored by checks fitted
without its acquisition source so that at most 1 % of *every* held-out source (HAM10000's four acquisition sources,
ISIC 2017, acral contributors) is refused; the refusal is `clinical_photo` or `not_skin`, whichever of the two is
more probable. Between the threshold and the card's `flag_below` lies a middle band, `maybe_clinical_photo`: camera
photos the threshold cannot refuse without refusing dermoscopy from new clinics, where the result is shown greyed
with "this may be a camera photo" rather than refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

KINDS = ("dermoscopy", "clinical_photo", "not_skin")
TENSOR_NAMES = ("feature_mean", "feature_scale", "weight", "bias")


@dataclass(frozen=True)
class DermoscopyCheck:
    feature_mean: np.ndarray    # (d,)   standardisation of the ImageNet features
    feature_scale: np.ndarray   # (d,)
    weight: np.ndarray          # (3, d) logistic regression over KINDS
    bias: np.ndarray            # (3,)
    threshold: float            # refuse when P(dermoscopy) < threshold
    flag_below: float | None = None  # "this may be a camera photo" when threshold <= P(dermoscopy) < flag_below

    def __post_init__(self):
        d = self.feature_mean.shape[0]
        if self.feature_scale.shape != (d,) or self.weight.shape != (len(KINDS), d) or self.bias.shape != (len(KINDS),):
            raise ValueError(f"dermoscopy check tensors do not fit together: mean {self.feature_mean.shape}, scale "
                             f"{self.feature_scale.shape}, weight {self.weight.shape}, bias {self.bias.shape}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"dermoscopy check threshold {self.threshold} is not a probability")
        if self.flag_below is not None and not self.threshold <= self.flag_below <= 1.0:
            raise ValueError(f"dermoscopy check flag_below {self.flag_below} is not a probability at or above the "
                             f"threshold {self.threshold}")

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], threshold: float,
                     flag_below: float | None = None) -> "DermoscopyCheck":
        missing = [name for name in TENSOR_NAMES if name not in tensors]
        if missing:
            raise ValueError(f"dermoscopy check tensors missing: {', '.join(missing)}")
        return cls(*(tensors[name].float().numpy().astype(np.float64) for name in TENSOR_NAMES), float(threshold),
                   None if flag_below is None else float(flag_below))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: torch.tensor(np.asarray(getattr(self, name)), dtype=torch.float32) for name in TENSOR_NAMES}

    def probabilities(self, imagenet_features) -> np.ndarray:
        """(N, 3) probabilities over KINDS."""
        x = (np.asarray(imagenet_features, dtype=np.float64) - self.feature_mean) / self.feature_scale
        logits = x @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def kinds(self, probabilities: np.ndarray) -> np.ndarray:
        return kinds_at(probabilities, self.threshold, self.flag_below)


def kinds_at(probabilities: np.ndarray, threshold: float, flag_below: float | None = None) -> np.ndarray:
    """'dermoscopy' where P(dermoscopy) >= flag_below (or >= threshold without a band), 'maybe_clinical_photo' in
    [threshold, flag_below), else the more probable of clinical_photo / not_skin."""
    p = np.asarray(probabilities)
    refused = np.where(p[:, 1] >= p[:, 2], "clinical_photo", "not_skin")
    passed = np.where(p[:, 0] < (threshold if flag_below is None else flag_below), "maybe_clinical_photo", "dermoscopy")
    return np.where(p[:, 0] >= threshold, passed, refused)
