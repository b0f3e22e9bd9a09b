"""Image-quality checks: what a dermatologist rejects at a glance (out of focus, badly exposed, lesion cut off...).

Each check is one measure of the image (and of the lesion mask the Analyzer segmented), compared with one threshold:

    checks = QualityChecks.from_card(card)          # the card's `image_quality` entry (calibration.fit_image_quality)
    verdict = checks.assess(rgb, mask, box)          # box: the field of view the networks were given
    verdict.fired, verdict.sentence

Every measure is taken on the field of view (core.imaging.preprocess.field_of_view_box, the dermatoscope's lit disk) resized
with area interpolation to WORKING_SIZE, so a 600x450 upload and the 200x150 training copies are measured alike.
Thresholds and each check's measured consequence (top-1 error of the images it flags against the rest, on held-out
data) come from `python -m calibration.fit_image_quality`; the card lists only the checks whose flagged images were
misclassified more often than the rest (docs/quality.md has the ones that were dropped and why). A check that fires
does not withhold the diagnosis: the screens show it greyed with the check's sentence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from core.decisions.model_card import ModelCard
from core.imaging.preprocess import Box

WORKING_SIZE = (150, 200)     # (height, width) every measure is taken at
HAIR_KERNEL = 9               # black-hat structuring element (px at WORKING_SIZE): wider than a hair, narrower than a lesion
HAIR_CONTRAST = 12            # grey levels a pixel must be darker than its surroundings to count as hair


@dataclass(frozen=True)
class WorkingView:
    """The field of view at WORKING_SIZE: grey levels and the lesion mask (bool)."""
    gray: np.ndarray
    lesion: np.ndarray


def working_view(rgb: np.ndarray, mask: np.ndarray, box: Box) -> WorkingView:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or mask.shape != rgb.shape[:2]:
        raise ValueError(f"expected an HxWx3 image and an HxW mask of the same size, got {rgb.shape} and {mask.shape}")
    y0, y1, x0, x1 = box
    size = (WORKING_SIZE[1], WORKING_SIZE[0])
    gray = cv2.resize(cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY), size,
                      interpolation=cv2.INTER_AREA)
    lesion = cv2.resize((mask[y0:y1, x0:x1] > 127).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return WorkingView(gray, lesion)


# ---------------------------------------------------------------- measures (one number per image)
def sharpness(view: WorkingView) -> float:
    """Variance of the Laplacian of the grey image: low when the image is out of focus."""
    return float(cv2.Laplacian(view.gray, cv2.CV_32F).var())


def brightness(view: WorkingView) -> float:
    """Median grey level (0-255) of the field of view."""
    return float(np.median(view.gray))


def lesion_share(view: WorkingView) -> float:
    """Share of the field of view the segmented lesion covers (0 when nothing was segmented)."""
    return float(view.lesion.mean())


def border_share(view: WorkingView) -> float:
    """Share of the field of view's outer frame (its first / last rows and columns) covered by the lesion: above 0
    the lesion runs off the picture."""
    lesion = view.lesion
    frame = np.concatenate([lesion[0], lesion[-1], lesion[1:-1, 0], lesion[1:-1, -1]])
    return float(frame.mean())


def hair_share(view: WorkingView) -> float:
    """Share of the skin around the lesion covered by thin dark lines (morphological black-hat, as DullRazor)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (HAIR_KERNEL, HAIR_KERNEL))
    hair = cv2.morphologyEx(view.gray, cv2.MORPH_BLACKHAT, kernel) >= HAIR_CONTRAST
    skin = ~view.lesion
    return float(hair[skin].mean()) if skin.any() else float(hair.mean())


MEASURES: dict[str, Callable[[WorkingView], float]] = {
    f.__name__: f for f in (sharpness, brightness, lesion_share, border_share, hair_share)}


def measure_all(rgb: np.ndarray, mask: np.ndarray, box: Box) -> dict[str, float]:
    view = working_view(rgb, mask, box)
    return {name: f(view) for name, f in MEASURES.items()}


# ---------------------------------------------------------------- checks
@dataclass(frozen=True)
class CheckKind:
    measure: str      # a key of MEASURES
    side: str         # "below" | "above": the check fires when the measure is below / above its threshold
    phrase: str       # what the sentence says when it fires


CHECK_KINDS: dict[str, CheckKind] = {
    "out_of_focus": CheckKind("sharpness", "below", "it looks out of focus"),
    "under_exposed": CheckKind("brightness", "below", "it is too dark"),
    "over_exposed": CheckKind("brightness", "above", "it is over-exposed (too bright)"),
    "lesion_cut_by_border": CheckKind("border_share", "above", "the lesion runs off the edge of the picture"),
    "lesion_too_small": CheckKind("lesion_share", "below", "the lesion is too small in the picture to assess"),
    "heavy_hair": CheckKind("hair_share", "above", "hair covers much of the skin"),
}


@dataclass(frozen=True)
class QualityCheck:
    name: str          # a key of CHECK_KINDS
    threshold: float

    def __post_init__(self):
        if self.name not in CHECK_KINDS:
            raise ValueError(f"unknown image-quality check {self.name!r}; known: {', '.join(CHECK_KINDS)}")
        if not np.isfinite(self.threshold):
            raise ValueError(f"image-quality check {self.name}: threshold {self.threshold} is not a number")

    @property
    def kind(self) -> CheckKind:
        return CHECK_KINDS[self.name]

    def fires(self, measures: dict[str, float]) -> bool:
        value = measures[self.kind.measure]
        return value < self.threshold if self.kind.side == "below" else value > self.threshold


@dataclass(frozen=True)
class QualityVerdict:
    fired: tuple[str, ...]          # names of the checks that fired, in CHECK_KINDS order
    sentence: str                   # one sentence ("" when none fired)
    measures: dict[str, float]


def quality_sentence(fired: tuple[str, ...]) -> str:
    if not fired:
        return ""
    phrases = [CHECK_KINDS[name].phrase for name in fired]
    joined = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return (f"{joined[0].upper()}{joined[1:]}: images like this were misclassified more often on held-out data, so "
            "the result is shown greyed (retake the image if you can).")


class QualityChecks:
    """The card's checks (those that passed the fit's keep rule), applied to one analysed image."""

    def __init__(self, checks: list[QualityCheck]):
        self.checks = sorted(checks, key=lambda c: list(CHECK_KINDS).index(c.name))

    @classmethod
    def from_card(cls, card: ModelCard) -> "QualityChecks":
        return cls([QualityCheck(name, threshold) for name, threshold in card.image_quality.thresholds.items()])

    def assess(self, rgb: np.ndarray, mask: np.ndarray, box: Box) -> QualityVerdict:
        measures = measure_all(rgb, mask, box)
        fired = tuple(check.name for check in self.checks if check.fires(measures))
        return QualityVerdict(fired, quality_sentence(fired), measures)
