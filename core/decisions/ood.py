"""Out-of-distribution: is this a dermoscopic image at all, and is it like the images the model was trained on?

Five levels; thresholds fitted on validation images (see the model card's `ood` and `dermoscopy_check`):
- clinical_photo (no diagnosis is shown): the trained dermoscopy check (core.decisions.dermoscopy_check, a head on the
  ImageNet features below, fitted on real clinical photographs of skin) judges a colourful image a camera photo of
  skin, not dermoscopy.
- not_skin (no diagnosis is shown), when
  * the dermoscopy check judges it a picture of something other than skin (a photograph, screenshot or drawing); or
  * it is not a photograph: large flat areas of one colour (a drawing, a screenshot: over FLAT_SHARE_LIMIT of its lit
    pixels) or pixel noise (over PIXEL_NOISE_LIMIT of its variance at the pixel scale), measured on the classifier
    input (picture_measures); or
  * the image has no colour: its chroma (Lab a/b offset from neutral plus their spreads) is below half that of the
    least colourful validation images (0.1 % quantile) - dermoscopy is never greyscale; or
  * its generic appearance is unlike dermoscopy: 1 - cosine similarity of its ImageNet features (EfficientNet-Lite0
    with the ImageNet weights of the pip package, never fine-tuned; randomly projected to PROJECTION_DIMS) to the
    nearest of REFERENCE_IMAGES training images exceeds the IMAGENET_QUANTILE validation quantile (when the
    dermoscopy check calls such an image a clinical photo, that more specific verdict is kept).
  The lesion classifier's own features cannot do this: trained on dermoscopy only, they place a photograph of a
  cat or a page of text close to a lesion class (measured: a real-photo rejection rate of 5 % at the same
  validation false-rejection rate, against ~90 % for the ImageNet features).
- maybe_clinical_photo (the diagnosis is shown greyed): P(dermoscopy) of the check in its middle band (the card's
  threshold .. flag_below): camera photos the threshold cannot refuse without refusing dermoscopy from new clinics.
- unusual (the diagnosis is shown greyed): a dermoscopic image whose distance to the training data exceeds the
  UNUSUAL_QUANTILE validation quantile; the distance (mask-CN feature Mahalanobis, similar-cases k-NN or ImageNet
  k-NN) is the one that ranks wrong predictions best on validation.
- in: everything else.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from core.decisions.dermoscopy_check import KINDS, DermoscopyCheck
from core.decisions.model_card import ModelCard
from core.decisions.ood_levels import OOD_LEVELS
UNUSUAL_SCORES = {"feature_distance": "distance of mask-CN's features to the nearest training class",
                  "case_distance": "distance to the nearest reference cases",
                  "imagenet_distance": "distance of the image's appearance to the nearest training image"}
CLINICAL_PHOTO_TEXT = ("This looks like a clinical (camera) photo, not a dermoscopy image. LesionLens is built and "
                       "validated for dermoscopy only; take the image through a dermatoscope.")
NOT_SKIN_TEXT = ("This does not look like an image of skin ({why}), so no diagnosis is shown. Upload a dermoscopy "
                 "image (contact or polarised dermatoscope) of a single lesion.")
MAYBE_CLINICAL_PHOTO_TEXT = ("This may be a clinical (camera) photo rather than a dermoscopy image, so the result is "
                             "shown greyed: LesionLens is validated for dermoscopy only. If it is a camera photo, take "
                             "the image through a dermatoscope.")
UNUSUAL_TEXT = ("This dermoscopic image is unlike the training images ({what} above that of {share} of validation "
                "images): the diagnosis is less reliable than the validation figures suggest.")


# Measured on the classifier input of all 13,836 dermoscopy images (HAM10000, ISIC 2017, acral) and 2,246 camera
# photos (DermNet, PAD-UFES-20): flat share at most 0.67 and pixel noise at most 0.37, none above either limit;
# drawn ellipses at least 0.80 flat, colour noise at least 0.49 pixel noise.
FLAT_SHARE_LIMIT = 0.75
PIXEL_NOISE_LIMIT = 0.45


def picture_measures(rgb: np.ndarray) -> tuple[float, float]:
    """(flat share, pixel noise) of a (classifier-input) image: the share of its lit pixels (grey 25..250, so
    vignette corners and glare do not count) whose 3x3 neighbourhood is of one value, as in drawings and screenshots;
    and the share of its grey variance at the pixel scale (minus a 1-pixel Gaussian blur), near 1 for random noise."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    mean, square = cv2.blur(grey, (3, 3)), cv2.blur(grey * grey, (3, 3))
    flat = np.sqrt(np.maximum(square - mean * mean, 0)) < 0.5
    lit = (grey > 25) & (grey < 250)
    detail = grey - cv2.GaussianBlur(grey, (0, 0), 1.0)
    return float((flat & lit).sum() / max(int(lit.sum()), 1)), float((detail ** 2).mean() / max(float(grey.var()), 1e-6))


def chroma(rgb: np.ndarray) -> float:
    """How colourful an image is: distance of its mean Lab (a, b) from neutral grey plus the spreads of a and b."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    mean, spread = lab.mean(0), lab.std(0)
    return float(np.hypot(mean[1] - 128, mean[2] - 128) + spread[1] + spread[2])


def imagenet_backbone() -> torch.nn.Module:
    """EfficientNet-Lite0 with the packaged ImageNet weights, pooled 1280-d features (never fine-tuned)."""
    import timm

    from core.models.pretrained import load_imagenet

    net = timm.create_model("efficientnet_lite0", num_classes=0)
    load_imagenet(net, "efficientnet_lite0", skip_suffixes=("classifier.weight", "classifier.bias"))
    return net.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def mahalanobis(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Min over `means` (K, d) of the Mahalanobis distance of each row of x (N, d)."""
    diff = x[:, None, :] - means[None]
    return torch.einsum("ncd,de,nce->nc", diff, precision, diff).min(dim=1).values.clamp(min=0).sqrt()


@dataclass(frozen=True)
class OODAssessment:
    level: str          # OOD_LEVELS
    score: float        # the unusual-level distance (the one number kept)
    reason: str         # one sentence for the clinician ("" when in distribution)


class OODDetector:
    """Tensors from ood.safetensors (mask-CN feature model, ImageNet projection and reference vectors),
    thresholds {chroma, imagenet_distance, unusual} and the unusual score's name from the model card; the trained
    dermoscopy check where the card has one."""

    def __init__(self, tensors: dict[str, torch.Tensor], thresholds: dict[str, float], unusual_score: str,
                 unusual_share: float = 0.1, check: DermoscopyCheck | None = None, held_out: dict | None = None):
        self.tensors = {k: v.float() for k, v in tensors.items()}
        self.thresholds = {k: float(thresholds[k]) for k in ("chroma", "imagenet_distance", "unusual")}
        if unusual_score not in UNUSUAL_SCORES:
            raise ValueError(f"unknown unusual score {unusual_score!r}; choose {', '.join(UNUSUAL_SCORES)}")
        self.unusual_score = unusual_score
        self.unusual_share = unusual_share
        self.check = check
        self.held_out = held_out or {}  # the card's ood.out_of_source: the flag's error rates on held-out sources

    @classmethod
    def from_card(cls, tensors: dict[str, torch.Tensor], card: ModelCard,
                  check: DermoscopyCheck | None) -> "OODDetector":
        """The detector of the card's `ood` section over the tensors of its ood.safetensors."""
        entry = card.ood
        return cls(tensors, entry.thresholds, entry.unusual_score, entry.unusual_share, check, entry.out_of_source)

    def feature_distance(self, pooled) -> np.ndarray:
        t = self.tensors
        z = (torch.as_tensor(pooled).float() - t["pca_mean"]) @ t["pca_components"].T
        return mahalanobis(z, t["class_means"], t["precision"]).numpy()

    def imagenet_distance(self, imagenet_features) -> np.ndarray:
        projected = torch.nn.functional.normalize(torch.as_tensor(imagenet_features).float()
                                                  @ self.tensors["imagenet_projection"], dim=1)
        reference = torch.nn.functional.normalize(self.tensors["imagenet_reference"], dim=1)
        return (1 - (projected @ reference.T).max(dim=1).values).numpy()

    def scores(self, pooled, imagenet_features, chroma_values, case_distance=None,
               picture=None) -> dict[str, np.ndarray]:
        """picture: picture_measures of each image (optional: without it the not-a-photograph rule does not apply)."""
        out = {"chroma": np.asarray(chroma_values, dtype=np.float64),
               "imagenet_distance": self.imagenet_distance(imagenet_features),
               "feature_distance": self.feature_distance(pooled)}
        if case_distance is not None:
            out["case_distance"] = np.asarray(case_distance, dtype=np.float64)
        if picture is not None:
            out["flat_share"], out["pixel_noise"] = np.asarray(picture, dtype=np.float64).reshape(-1, 2).T
        if self.check is not None:
            out.update({f"p_{kind}": p for kind, p in zip(KINDS, self.check.probabilities(imagenet_features).T)})
        return out

    def check_kinds(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The dermoscopy check's verdict per image (all 'dermoscopy' without a check)."""
        if self.check is None:
            return np.full(len(scores["chroma"]), "dermoscopy")
        return self.check.kinds(np.stack([scores[f"p_{kind}"] for kind in KINDS], axis=1))

    def levels(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        t = self.thresholds
        kinds = self.check_kinds(scores)
        generic = (scores["chroma"] < t["chroma"]) | (scores["imagenet_distance"] > t["imagenet_distance"])
        unusual = scores[self.unusual_score] > t["unusual"]
        # no colour or no photograph is never skin, whatever the check says; otherwise the check's clinical-photo
        # verdict is kept even where the generic distance is far (an overview photo of a limb is a camera photo)
        colourless = (scores["chroma"] < t["chroma"]) | self.not_a_photograph(scores)
        passed = np.where(kinds == "maybe_clinical_photo", "maybe_clinical_photo", np.where(unusual, "unusual", "in"))
        return np.where(colourless, "not_skin", np.where(kinds == "clinical_photo", "clinical_photo",
                        np.where(generic | (kinds == "not_skin"), "not_skin", passed)))

    @staticmethod
    def not_a_photograph(scores: dict[str, np.ndarray]) -> np.ndarray:
        """Drawings, screenshots (flat areas) and random noise, where the picture measures were given."""
        n = len(scores["chroma"])
        return ((scores.get("flat_share", np.zeros(n)) > FLAT_SHARE_LIMIT)
                | (scores.get("pixel_noise", np.zeros(n)) > PIXEL_NOISE_LIMIT))

    def held_out_text(self) -> str:
        """What the unusual flag meant at clinics the model was not trained on ('' without those figures)."""
        flagged, rest = self.held_out.get("error_rate_flagged"), self.held_out.get("error_rate_rest")
        if flagged is None or rest is None:
            return ""
        return (f"At clinics the model was not trained on, the top prediction for images flagged so was wrong "
                f"{flagged:.0%} of the time, against {rest:.0%} for the others.")

    def assess(self, scores: dict[str, np.ndarray]) -> OODAssessment:
        """One image's level (scores of a batch of one) and the sentence the screens show."""
        level = str(self.levels(scores)[0])
        score = float(scores[self.unusual_score][0])
        if level == "clinical_photo":
            return OODAssessment(level, score, CLINICAL_PHOTO_TEXT)
        if level == "not_skin":
            if scores["chroma"][0] < self.thresholds["chroma"]:
                why = "it has no colour, and dermoscopy images always do"
            elif self.not_a_photograph(scores)[0]:
                why = "it is not a photograph: a drawing, a screenshot or pixel noise"
            elif self.check_kinds(scores)[0] == "not_skin":
                why = "the dermoscopy check judges it a picture of something other than skin"
            else:
                why = "its appearance is far from every dermoscopy image the model was trained on"
            return OODAssessment(level, score, NOT_SKIN_TEXT.format(why=why))
        if level == "maybe_clinical_photo":
            return OODAssessment(level, score, MAYBE_CLINICAL_PHOTO_TEXT)
        if level == "unusual":
            text = UNUSUAL_TEXT.format(what=UNUSUAL_SCORES[self.unusual_score], share=f"{1 - self.unusual_share:.0%}")
            return OODAssessment(level, score, " ".join(filter(None, (text, self.held_out_text()))))
        return OODAssessment(level, score, "")
