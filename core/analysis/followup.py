"""Lesion follow-up (sequential dermoscopy): register a follow-up image of a lesion to its baseline image, tabulate
the change of every lesion measurement and class probability, and compare each change with the measurement noise
(the "no real change" band) estimated on HAM10000 lesions photographed more than once (calibration.followup_noise).

Registration, follow-up -> baseline, a similarity transform (scale, rotation, shift):

1. ORB features on both images, each resized so that its longer side is ``WORK_SIDE`` px (a 200x150 image has too
   few features at its own size), contrast-equalised (CLAHE). The dark dermoscope vignette (dark regions touching
   the image border) is masked out: it is fixed in the image, not on the skin, and would pull the fit to identity.
2. Ratio-test matches (``MATCH_RATIO``), each baseline keypoint used by one match at most (many-to-one matches make
   RANSAC collapse to a degenerate, near-zero scale), then RANSAC (cv2.estimateAffinePartial2D).
3. Accepted with at least ``MIN_INLIERS`` inliers and a scale within ``SCALE_RANGE``. Otherwise the fallback:
   the follow-up lesion is centred on the baseline lesion (mask centroids) and scaled by sqrt(area ratio), no
   rotation. That alignment is made from the lesion sizes, so it cannot show a change of size.

Same lesion or not: when the feature registration fails, the pair may show two different lesions (two different
lesions never registered in the tests, 369 of 400 same-lesion HAM10000 pairs did: calibration.followup_noise), so no
change is reported at all: every row is "not compared" and the verdict says so.

Changes: sizes (area, maximum diameter) are compared in baseline pixels (the follow-up value times the
registration scale, squared for areas; or times the ratio of the two pixel sizes when both images carry one, e.g.
DICOM PixelSpacing: the registration is fitted mostly on the lesion's own features, so it would take a lesion grown
as a whole for a zoom) and as a fraction of the baseline value; asymmetry, border irregularity,
number of colours and the class probabilities are scale-free and compared as differences. Size changes are "not
assessed" (not compared with the band) when the images could not be registered (the follow-up values then assume
both images show the same field of view) or when a lesion reaches the image edge (it may continue outside it).

What counts as a change, most important first (``Comparison.findings``): a change of the most probable class or of
the triage verdict (categorical: never "within noise", whatever a probability band says), then the measurements
beyond their band in clinical order (``CLINICAL_ORDER``: melanoma probability, then size, shape and colour, then the
other classes), never in the order of their band widths. The same image given twice is refused (``SameImage``).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from core.analysis.cam import overlay_mask
from core.data.classes import CLASS_BY_CODE, CLASS_CODES
from core.decisions.model_card import ModelCard
from core.io.weights_io import NETWORK_FILES

WORK_SIDE = 600
ORB_FEATURES = 3000
MATCH_RATIO = 0.8
RANSAC_THRESHOLD_PX = 6.0        # in WORK_SIDE pixels (1 % of the image width)
MIN_INLIERS = 12
SCALE_RANGE = (0.25, 4.0)
VIGNETTE_GRAY = 35               # a dark region touching the border below this grey level is the dermoscope's edge
VIGNETTE_MARGIN_PX = 15          # and this much around it (its rim is a strong, static edge) in WORK_SIDE pixels
FEATURES = "features"
CHAINED = "features via another image"   # two registrations composed (core.analysis.lesion_history)
LESION_MASKS = "lesion masks"
BASELINE_COLOUR = (0, 230, 118)  # green, the dashboard's mask colour
FOLLOWUP_COLOUR = (41, 121, 255)  # blue
BAND_FILE = "followup_noise.json"
BAND_QUANTILE = 0.95
#: A class probability whose no-change band is wider than this (in probability, i.e. 25 percentage points) cannot
#: show a change: two photographs of one lesion already differ by that much one time in twenty.
UNINFORMATIVE_PROBABILITY_BAND = 0.25

# ---------------------------------------------------------------- registration


@dataclass(frozen=True)
class Registration:
    matrix: np.ndarray     # 2x3 float64: follow-up pixel (x, y, 1) -> baseline pixel
    method: str            # FEATURES or LESION_MASKS
    n_matches: int = 0
    n_inliers: int = 0
    reason: str = ""       # why the feature registration was not used ("" when it was); for CHAINED: through what

    @property
    def registered(self) -> bool:
        return self.method in (FEATURES, CHAINED)

    def then(self, onto: "Registration", through: str) -> "Registration":
        """This registration (A -> B) followed by ``onto`` (B -> C): A -> C, registered when both are."""
        first, second = np.vstack([self.matrix, [0, 0, 1]]), np.vstack([onto.matrix, [0, 0, 1]])
        method = CHAINED if self.registered and onto.registered else LESION_MASKS
        return Registration((second @ first)[:2], method, min(self.n_matches, onto.n_matches),
                            min(self.n_inliers, onto.n_inliers), through)

    @property
    def scale(self) -> float:
        return float(math.hypot(self.matrix[0, 0], self.matrix[1, 0]))

    @property
    def rotation_deg(self) -> float:
        return float(math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0])))

    @property
    def shift(self) -> tuple[float, float]:
        return float(self.matrix[0, 2]), float(self.matrix[1, 2])

    def describe(self) -> str:
        if self.method == CHAINED:
            return (f"Registered by feature matching {self.reason}: the image is scaled x{self.scale:.2f}, rotated "
                    f"{self.rotation_deg:+.1f}° and shifted ({self.shift[0]:+.0f}, {self.shift[1]:+.0f}) px onto the "
                    "baseline.")
        if self.registered:
            return (f"Registered by feature matching ({self.n_inliers} of {self.n_matches} matches agree): the "
                    f"follow-up is scaled x{self.scale:.2f}, rotated {self.rotation_deg:+.1f}° and shifted "
                    f"({self.shift[0]:+.0f}, {self.shift[1]:+.0f}) px onto the baseline.")
        return (f"Feature matching failed ({self.reason}). The follow-up lesion was instead centred on the baseline "
                "lesion and scaled to the same area (no rotation): the overlay compares shapes only.")


def _work_gray(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Grey, contrast-equalised image with its longer side WORK_SIDE px, the mask where features may lie, and the
    resize factor."""
    factor = WORK_SIDE / max(rgb.shape[:2])
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    gray = cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA)
    dark = (cv2.GaussianBlur(gray, (5, 5), 0) < VIGNETTE_GRAY).astype(np.uint8)
    _, labels = cv2.connectedComponents(dark, connectivity=8)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    vignette = np.isin(labels, edge[edge > 0]).astype(np.uint8)
    size = 2 * VIGNETTE_MARGIN_PX + 1
    vignette = cv2.dilate(vignette, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    equalised = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)
    return equalised, np.where(vignette > 0, 0, 255).astype(np.uint8), factor


def feature_registration(baseline_rgb: np.ndarray, followup_rgb: np.ndarray) -> tuple[np.ndarray | None, int, int, str]:
    """(2x3 follow-up -> baseline matrix or None, matches, inliers, reason for None)."""
    orb = cv2.ORB_create(ORB_FEATURES, fastThreshold=5)
    found = []
    for rgb in (baseline_rgb, followup_rgb):
        gray, where, factor = _work_gray(rgb)
        keypoints, descriptors = orb.detectAndCompute(gray, where)
        if descriptors is None or len(keypoints) < MIN_INLIERS:
            return None, 0, 0, f"too few features ({len(keypoints)}) in the {'baseline' if not found else 'follow-up'}"
        found.append((keypoints, descriptors, factor))
    (kb, db, fb), (kf, df, ff) = found
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(df, db, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < MATCH_RATIO * p[1].distance]
    used = Counter(m.trainIdx for m in good)
    good = [m for m in good if used[m.trainIdx] == 1]
    if len(good) < MIN_INLIERS:
        return None, len(good), 0, f"{len(good)} distinctive matches, {MIN_INLIERS} needed"
    src = np.float32([kf[m.queryIdx].pt for m in good])
    dst = np.float32([kb[m.trainIdx].pt for m in good])
    cv2.setRNGSeed(0)  # the same pair always gives the same RANSAC result
    matrix, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, maxIters=5000, confidence=0.999,
                                                  ransacReprojThreshold=RANSAC_THRESHOLD_PX)
    n_inliers = int(inliers.sum()) if inliers is not None else 0
    if matrix is None or n_inliers < MIN_INLIERS:
        return (None, len(good), n_inliers,
                f"{n_inliers} of {len(good)} matches agree on one transform, {MIN_INLIERS} needed")
    # working pixels -> image pixels: p_b = (A_w (ff p_f) + t_w) / fb
    matrix = np.hstack([matrix[:, :2] * (ff / fb), matrix[:, 2:] / fb]).astype(np.float64)
    scale = math.hypot(matrix[0, 0], matrix[1, 0])
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        return None, len(good), n_inliers, f"implausible scale x{scale:.2f}"
    return matrix, len(good), n_inliers, ""


def _centroid_area(mask: np.ndarray) -> tuple[np.ndarray, float] | None:
    moments = cv2.moments((np.asarray(mask) > 127).astype(np.uint8), binaryImage=True)
    if moments["m00"] <= 0:
        return None
    return np.array([moments["m10"], moments["m01"]]) / moments["m00"], float(moments["m00"])


def mask_alignment(baseline_mask: np.ndarray, followup_mask: np.ndarray) -> np.ndarray:
    """Follow-up -> baseline: lesion centroid onto lesion centroid, scaled by sqrt(area ratio), no rotation. Without a
    lesion in one of the masks: image centre onto image centre, scaled by the width ratio."""
    base, follow = _centroid_area(baseline_mask), _centroid_area(followup_mask)
    if base is None or follow is None:
        (hb, wb), (hf, wf) = baseline_mask.shape[:2], followup_mask.shape[:2]
        base, follow = (np.array([wb / 2, hb / 2]), float(wb * wb)), (np.array([wf / 2, hf / 2]), float(wf * wf))
    scale = math.sqrt(base[1] / follow[1])
    shift = base[0] - scale * follow[0]
    return np.array([[scale, 0.0, shift[0]], [0.0, scale, shift[1]]])


def register(baseline_rgb: np.ndarray, followup_rgb: np.ndarray, baseline_mask: np.ndarray,
             followup_mask: np.ndarray) -> Registration:
    matrix, n_matches, n_inliers, reason = feature_registration(baseline_rgb, followup_rgb)
    if matrix is not None:
        return Registration(matrix, FEATURES, n_matches, n_inliers)
    return Registration(mask_alignment(baseline_mask, followup_mask), LESION_MASKS, n_matches, n_inliers, reason)


def mask_to_baseline(mask: np.ndarray, registration: Registration, baseline_shape: tuple[int, ...]) -> np.ndarray:
    """The follow-up lesion mask resampled into the baseline image's frame."""
    height, width = baseline_shape[:2]
    return cv2.warpAffine(mask, registration.matrix, (width, height), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def contours(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], second_mask: np.ndarray | None = None,
             second_colour: tuple[int, int, int] = FOLLOWUP_COLOUR) -> np.ndarray:
    """``rgb`` with the outline of ``mask`` (and of ``second_mask``) drawn on it."""
    out = overlay_mask(rgb, mask, color=colour, alpha=0.0, contour=True)
    return out if second_mask is None else overlay_mask(out, second_mask, color=second_colour, alpha=0.0, contour=True)


# ---------------------------------------------------------------- measurements and their change


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    size_power: int = 0      # 2 for areas, 1 for lengths (converted to baseline pixels, compared relatively), 0 else
    probability: bool = False

    @property
    def relative(self) -> bool:
        return self.size_power > 0


MEASURES: tuple[Measure, ...] = (
    Measure("area", "Area", size_power=2),
    Measure("max_diameter", "Maximum diameter", size_power=1),
    Measure("asymmetry", "Asymmetry (0 = symmetric)"),
    Measure("border_irregularity", "Border irregularity (1 = circle)"),
    Measure("n_colours", "Number of dermoscopic colours"),
    *(Measure(f"p_{code}", f"P({CLASS_BY_CODE[code].name})", probability=True) for code in CLASS_CODES),
)
_SOURCE = {"area": "area_px", "max_diameter": "max_diameter_px", "asymmetry": "asymmetry",
           "border_irregularity": "border_irregularity", "n_colours": "n_colours"}

WITHIN, BEYOND, NO_BAND, NOT_ASSESSED, NO_LESION = ("within noise", "beyond noise", "no band", "not assessed",
                                                    "no lesion")
UNINFORMATIVE = "band too wide to tell"   # a probability whose band exceeds UNINFORMATIVE_PROBABILITY_BAND
NOT_COMPARED = "not compared"             # the pair may not show one lesion: no change is reported


#: The order findings are stated in: what changes a clinical decision first. The melanoma probability leads (the
#: referral is decided on it), then size (the classic follow-up signal of a melanocytic lesion), shape and colour,
#: then the other malignant classes, then the benign ones.
CLINICAL_ORDER = ("p_mel", "max_diameter", "area", "asymmetry", "border_irregularity", "n_colours", "p_bcc", "p_akiec",
                  "p_nv", "p_bkl", "p_df", "p_vasc")
#: A melanoma probability that moves this much is mentioned even when its band is too wide to call it a change.
MELANOMA_NOTE_PP = 0.10


class SameImage(ValueError):
    """The baseline and the follow-up are one image; str(exc) is the sentence to show."""


def refuse_same_image(baseline_rgb: np.ndarray, followup_rgb: np.ndarray, what: str = "baseline and follow-up") -> None:
    """SameImage when the two images have identical pixels (the same file given twice)."""
    if baseline_rgb.shape == followup_rgb.shape and np.array_equal(baseline_rgb, followup_rgb):
        raise SameImage(f"The {what} are the same image: a follow-up needs a second photograph of the lesion, "
                        "taken at a later visit.")


def measure_values(result) -> dict[str, float | None]:
    """Every MEASURES value of an AnalysisResult (lesion values None when no lesion was segmented)."""
    return values_of(result.measurements, result.probs)


def values_of(measurements, probs) -> dict[str, float | None]:
    """Every MEASURES value from lesion measurements (core.lesion.lesion_measurements keys, e.g. a batch result
    row; None / NaN / "empty" = no lesion) and class probabilities (code -> probability)."""
    def number(value) -> float | None:
        return None if value is None or value != value else float(value)  # NaN != NaN: a missing Parquet value

    empty = bool(measurements.get("empty")) or number(measurements.get("area_px")) is None
    values = {key: (None if empty else number(measurements[source])) for key, source in _SOURCE.items()}
    values.update({f"p_{code}": float(probs[code]) for code in CLASS_CODES})
    return values


@dataclass(frozen=True)
class Change:
    measure: Measure
    baseline: float | None
    followup: float | None   # in baseline pixels for sizes
    change: float | None     # follow-up - baseline; for sizes as a fraction of the baseline value
    band: float | None       # the no-change band (|change| up to it is measurement noise)
    status: str

    @property
    def assessable(self) -> bool:
        """Whether this change says something about the lesion (what the noise band is computed from)."""
        return self.change is not None and self.status != NOT_ASSESSED


def _status(measure: Measure, change: float | None, sizes_comparable: bool, band: float | None) -> str:
    if change is None:
        return NO_LESION
    if measure.relative and not sizes_comparable:
        return NOT_ASSESSED
    if band is None:
        return NO_BAND
    if measure.probability and band > UNINFORMATIVE_PROBABILITY_BAND:
        return UNINFORMATIVE
    return BEYOND if abs(change) > band else WITHIN


def change_table(baseline: dict, followup: dict, size_scale: float, sizes_comparable: bool,
                 band: dict | None = None) -> list[Change]:
    """One Change per MEASURES entry. ``baseline``/``followup`` are measure_values, follow-up sizes are converted to
    baseline pixels with ``size_scale`` (follow-up -> baseline pixel size); size changes are only compared with the
    band when ``sizes_comparable``. ``band`` is a no-change band (load_band) or None."""
    rows = []
    for measure in MEASURES:
        before, after = baseline[measure.key], followup[measure.key]
        if after is not None:
            after *= size_scale ** measure.size_power
        change = None
        if before is not None and after is not None:
            change = (after - before) / before if measure.relative else after - before
        limit = (band or {}).get("measurements", {}).get(measure.key, {}).get("band")
        rows.append(Change(measure, before, after, change, limit, _status(measure, change, sizes_comparable, limit)))
    return rows


def touches_edge(mask: np.ndarray) -> bool:
    """Whether the measured lesion (the mask's largest connected component, as in measure_lesion) reaches the image
    border: it may continue outside the picture."""
    count, _, stats, _ = cv2.connectedComponentsWithStats((np.asarray(mask) > 127).astype(np.uint8), connectivity=8)
    if count <= 1:
        return False
    x, y, width, height, _ = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
    return bool(x == 0 or y == 0 or x + width == mask.shape[1] or y + height == mask.shape[0])


@dataclass(frozen=True)
class CategoricalChange:
    """A change of the most probable class or of the triage verdict between two analyses."""
    what: str      # "most probable class" / "triage verdict"
    before: str
    after: str

    def sentence(self) -> str:
        return f"{self.what} changed from {self.before} to {self.after}"


def _top_class(result) -> str:
    return f"{CLASS_BY_CODE[result.label].name} {100 * result.probs[result.label]:.0f} %"


def categorical_changes(before, after, verdict=None) -> list[CategoricalChange]:
    """Top class and triage verdict changes between two AnalysisResults (only where both have a diagnosis).
    ``verdict(result)`` gives a result's core.decisions.triage.Verdict (default: result.triage, the card's)."""
    if not (before.diagnosis_shown and after.diagnosis_shown):
        return []
    verdict = verdict or (lambda result: result.triage)
    found = []
    if before.label != after.label:
        found.append(CategoricalChange("most probable class", _top_class(before), _top_class(after)))
    v_before, v_after = verdict(before), verdict(after)
    if v_before is not None and v_after is not None and v_before.level != v_after.level:
        found.append(CategoricalChange("triage verdict", v_before.headline, v_after.headline))
    return found


def change_sentence(change: Change, mm_per_pixel: float | None = None) -> str:
    """'Maximum diameter +18 % (+0.92 mm), beyond the ±13 % noise' for one change."""
    measure = change.measure
    if measure.probability:
        amount = (f"from {100 * change.baseline:.1f} % to {100 * change.followup:.1f} % "
                  f"({_signed(100 * change.change, 1)} pp)")
    elif measure.relative:
        amount = f"{_signed(100 * change.change, 0)} %"
        if mm_per_pixel:
            mm = (change.followup - change.baseline) * mm_per_pixel ** measure.size_power
            amount += f" ({_signed(mm, 1)} mm²)" if measure.size_power == 2 else f" ({_signed(mm, 2)} mm)"
    else:
        amount = _signed(change.change, 0 if measure.key == "n_colours" else 2)
    name = measure.label.split(" (")[0]
    return f"{name} {amount}, beyond the {_band(change)} noise"


def clinical_order(changes: list[Change]) -> list[Change]:
    rank = {key: index for index, key in enumerate(CLINICAL_ORDER)}
    return sorted(changes, key=lambda c: rank.get(c.measure.key, len(rank)))


@dataclass
class Comparison:
    baseline: object                   # AnalysisResult
    followup: object                   # AnalysisResult
    registration: Registration
    size_note: str                     # why size changes are not assessed ("" when they are)
    changes: list[Change]
    followup_mask_on_baseline: np.ndarray
    lesion_doubt: str = ""             # why the images may not show one lesion ("" when they registered)
    categorical: list[CategoricalChange] = field(default_factory=list)  # top class / triage verdict changes
    size_scale: str = "registration"   # how follow-up sizes were put in baseline pixels: or "pixel spacing"

    def beyond_noise(self) -> list[Change]:
        """The measurements beyond their band, in clinical order."""
        return clinical_order([c for c in self.changes if c.status == BEYOND])

    def findings(self, mm_per_pixel: float | None = None) -> list[str]:
        """Every change as a sentence, most important first: top class and verdict, then the measurements."""
        if self.lesion_doubt:
            return []
        return ([c.sentence() for c in self.categorical]
                + [change_sentence(c, mm_per_pixel) for c in self.beyond_noise()])

    def melanoma_note(self) -> str:
        """A melanoma probability that moved by MELANOMA_NOTE_PP or more but whose band is too wide to call it a
        change, in words ("" otherwise): the number a clinician looks for first is never left unsaid."""
        mel = next((c for c in self.changes if c.measure.key == "p_mel"), None)
        if self.lesion_doubt or mel is None or mel.status != UNINFORMATIVE or abs(mel.change) < MELANOMA_NOTE_PP:
            return ""
        return (f"P(melanoma) went from {100 * mel.baseline:.1f} % to {100 * mel.followup:.1f} %; two photographs of "
                f"one lesion differ by up to ±{100 * mel.band:.0f} pp, so this alone does not show a change.")

    def verdict(self, mm_per_pixel: float | None = None) -> str:
        """The sentence the page and the PDF put above the change table."""
        if self.lesion_doubt:
            return f"These may not be the same lesion ({self.lesion_doubt}): no changes are reported."
        found = self.findings(mm_per_pixel)
        head = (f"{len(found)} change(s): " + "; ".join(found) + "." if found
                else "No change beyond the measurement noise.")
        note = self.melanoma_note()
        return head + (f" {note}" if note else "")


def _size_note(registration: Registration, baseline_mask: np.ndarray, followup_mask: np.ndarray) -> str:
    if not registration.registered:
        return "the images could not be registered, so their relative magnification is unknown"
    cut = [name for name, mask in (("baseline", baseline_mask), ("follow-up", followup_mask)) if touches_edge(mask)]
    if cut:
        return f"the lesion reaches the edge of the {' and the '.join(cut)} image and may continue outside it"
    return ""


def compare_results(before, after, baseline_rgb: np.ndarray, followup_rgb: np.ndarray, band: dict | None = None,
                    registration: Registration | None = None, verdict=None,
                    mm_per_pixel: tuple[float | None, float | None] = (None, None)) -> Comparison:
    """The comparison of two analyses (AnalysisResults of the two images): registered (unless ``registration`` is
    given), changes tabulated, categorical changes found (``verdict`` as for categorical_changes). Follow-up sizes
    are converted to baseline pixels with the pixel sizes when both images have one (``mm_per_pixel``: baseline,
    follow-up; e.g. DICOM PixelSpacing: a calibrated scale owes nothing to the lesion), else with the registration
    scale, else assuming both images show the same field of view."""
    registration = registration or register(baseline_rgb, followup_rgb, before.mask, after.mask)
    calibrated = all(mm_per_pixel)
    if calibrated:
        scale = mm_per_pixel[1] / mm_per_pixel[0]
    else:
        scale = registration.scale if registration.registered else baseline_rgb.shape[1] / followup_rgb.shape[1]
    note = _size_note(registration, before.mask, after.mask)
    changes = change_table(measure_values(before), measure_values(after), scale, not note, band)
    doubt = "" if registration.registered else "the images could not be registered onto each other"
    if doubt:
        changes = [replace(c, status=NOT_COMPARED) if c.assessable else c for c in changes]
    return Comparison(before, after, registration, note, changes,
                      mask_to_baseline(after.mask, registration, baseline_rgb.shape), doubt,
                      [] if doubt else categorical_changes(before, after, verdict),
                      "pixel spacing" if calibrated else "registration")


def compare_images(analyzer, baseline_rgb: np.ndarray, followup_rgb: np.ndarray, band: dict | None = None,
                   verdict=None, mm_per_pixel: tuple[float | None, float | None] = (None, None)) -> Comparison:
    """Analyse both images with the shipped Analyzer and compare them (compare_results); SameImage when they are
    one image."""
    refuse_same_image(baseline_rgb, followup_rgb)
    return compare_results(analyzer.analyze(baseline_rgb), analyzer.analyze(followup_rgb), baseline_rgb,
                           followup_rgb, band, verdict=verdict, mm_per_pixel=mm_per_pixel)


# ---------------------------------------------------------------- display text (page and PDF)
TABLE_COLUMNS = ("Measurement", "Baseline", "Follow-up", "Change", "No-change band", "Assessment")


def _value(measure: Measure, value: float | None, mm_per_pixel: float | None) -> str:
    if value is None:
        return "—"
    if measure.probability:
        return f"{100 * value:.1f} %"
    if measure.key == "n_colours":
        return f"{value:.0f}"
    if not measure.relative:
        return f"{value:.2f}"
    text = f"{value:,.0f} px" if measure.size_power == 2 else f"{value:.1f} px"
    if mm_per_pixel:
        mm = value * mm_per_pixel ** measure.size_power
        text += f" ({mm:.1f} mm²)" if measure.size_power == 2 else f" ({mm:.2f} mm)"
    return text


def _signed(value: float, digits: int, thousands: bool = False) -> str:
    """+1.5 / -0.3 / +0.0 (a change that rounds to zero is never shown as -0.0)."""
    rounded = round(value, digits) + 0.0
    return f"{rounded:+,.{digits}f}" if thousands else f"{rounded:+.{digits}f}"


def _change(change: Change, mm_per_pixel: float | None) -> str:
    if change.change is None or change.status == NOT_COMPARED:
        return "—"
    measure = change.measure
    if measure.probability:
        return f"{_signed(100 * change.change, 1)} pp"
    if not measure.relative:
        return _signed(change.change, 0 if measure.key == "n_colours" else 2)
    difference = change.followup - change.baseline
    area = measure.size_power == 2
    text = f"{_signed(difference, 0, thousands=True)} px" if area else f"{_signed(difference, 1)} px"
    if mm_per_pixel:
        mm = difference * mm_per_pixel ** measure.size_power
        text += f" / {_signed(mm, 1)} mm²" if area else f" / {_signed(mm, 2)} mm"
    return f"{text} ({_signed(100 * change.change, 0)} %)"


def _band(change: Change) -> str:
    if change.band is None:
        return "—"
    measure = change.measure
    if measure.probability:
        return f"±{100 * change.band:.0f} pp" + (" (uninformative)" if change.status == UNINFORMATIVE else "")
    if measure.relative:
        return f"±{100 * change.band:.0f} %"
    return f"±{change.band:.0f}" if measure.key == "n_colours" else f"±{change.band:.2f}"


def table_text(changes: list[Change], mm_per_pixel: float | None = None) -> list[tuple[str, ...]]:
    """The change table as display strings, one tuple per change in TABLE_COLUMNS order (mm values when the baseline's
    mm_per_pixel is known)."""
    return [(c.measure.label, _value(c.measure, c.baseline, mm_per_pixel), _value(c.measure, c.followup, mm_per_pixel),
             _change(c, mm_per_pixel), _band(c), c.status) for c in changes]


# ---------------------------------------------------------------- the no-change band (calibration.followup_noise)
def weights_fingerprint(card: ModelCard) -> str:
    """A short digest of the network weight files a model card lists: the band measures what the three networks
    output, so it changes with any retraining of them (a version name may not), not with a refitted OOD or
    dermoscopy check."""
    text = "\n".join(f"{name}:{card.files[name].sha256 if name in card.files else ''}"
                     for name in sorted(NETWORK_FILES.values()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _quantile(values: np.ndarray, q: float) -> float:
    """An observed value (the smallest with at least a fraction q of the values at or below it), rounded."""
    return round(float(np.quantile(values, q, method="inverted_cdf")), 4)


def noise_band(changes: list[list[Change]], quantile: float = BAND_QUANTILE) -> dict:
    """Per measure: quantiles of |change| over same-lesion pairs (assessable changes only) and the band, the
    ``quantile`` one."""
    out = {}
    for measure in MEASURES:
        values = np.array([abs(c.change) for pair in changes for c in pair
                           if c.measure.key == measure.key and c.assessable])
        if not len(values):
            continue
        levels = sorted({0.5, 0.9, quantile})
        out[measure.key] = {
            "label": measure.label, "change": "relative" if measure.relative else "absolute", "n_pairs": len(values),
            "quantiles": {f"{q:g}": _quantile(values, q) for q in levels},
            "band": _quantile(values, quantile),
        }
    return out


def load_band(path: str | Path, card: ModelCard) -> tuple[dict | None, str]:
    """(band, description) or (None, why it is unavailable). The band must have been computed for the weights the
    model card describes (same version and weight files)."""
    path = Path(path)
    if not path.is_file():
        return None, f"no noise-band file ({path.name}); compute it with `python -m calibration.followup_noise`"
    try:
        band = json.loads(path.read_text())
        measurements = band["measurements"]
        quantile, n_pairs = float(band["quantile"]), int(band["n_pairs"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{path.name} is unreadable ({exc})"
    version, fingerprint = card.version, weights_fingerprint(card)
    if band.get("weights_version") != version or band.get("weights_fingerprint") != fingerprint:
        return None, (f"{path.name} was computed for weights {band.get('weights_version')} "
                      f"({band.get('weights_fingerprint')}), not the loaded {version} ({fingerprint})")
    if not isinstance(measurements, dict) or not measurements:
        return None, f"{path.name} holds no measurements"
    return band, (f"{100 * quantile:g}th percentile of |change| between two images of one lesion, over {n_pairs} "
                  f"HAM10000 lesions ({band.get('images', '')}); model {version}.")
