"""One triage verdict at the top of every result: the referral rules, the clear-nevus rule, the uncertainty level, the
unusual-image flag and the image-quality checks combined in a fixed order of precedence (the more severe wins), as
triage devices do.

1. not_assessed  the input is not dermoscopy (clinical photo, not skin): no diagnosis at all, and a verdict of its
                 own, "no automated assessment: review this lesion yourself" (a refused image is not a benign one).
2. refer         a malignant class (melanoma, basal cell carcinoma, actinic keratosis / intraepithelial carcinoma)
                 reaches its referral threshold. Each class has its own threshold on its own probability, fitted by
                 calibration.out_of_source for a target sensitivity in every source it was fitted on.
3. no_referral   a clear melanocytic nevus: its nevus probability reaches the clear threshold and every malignant
                 class stays below a fraction (the clear margin) of its referral threshold, both fitted by
                 calibration.out_of_source so that few lesions cleared were malignant at clinics the rule was not
                 fitted on; the views agree (uncertainty not high), the image is typical and no image-quality check
                 fired. The nevus probability, not a low malignant probability, decides: among the
                 lesions below every referral threshold it ranks the malignant ones far better held out (a confident
                 "benign keratosis" hides actinic keratoses and BCCs; a confident nevus rarely hides anything).
4. review        everything else: below the referral thresholds but not a clear nevus, or a clear nevus whose result
                 cannot be relied on (high uncertainty, an unusual image or one that may be a camera photo, an
                 image-quality problem). "Not reassuring", not "benign".

Every verdict quotes one figure of what it did at clinics the model was not trained on (held-out sources: the
card's `triage.out_of_source`), so the sentence states its own reliability; under a melanoma threshold other than the
card's those figures do not apply and none is quoted here (the screens quote that threshold's own operating point).
A referral says why it outranks a benign top class, and a call whose threshold lies within the spread of the
test-time views (core.decisions.view_spread) is marked as within the noise of that threshold.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.data.classes import CLASS_BY_CODE, CLASS_CODES, CLASS_INDEX, MALIGNANT_CODES
from core.decisions.model_card import ModelCard
from core.decisions.ood_levels import GREYED_LEVELS, REFUSED_LEVELS
from core.decisions.view_spread import range_sentence, straddled

VERDICTS = ("not_assessed", "refer", "review", "no_referral")
CLEAR_CLASS = "nv"  # the class whose probability clears a lesion (see the module's docstring)
# Why a refusal is no reassurance, said with every refused image.
NOT_ASSESSED_NOTE = ("LesionLens gives no result for this image; that says nothing about the lesion, which needs the "
                     "clinical assessment it would get without LesionLens")
HEADLINES = {
    "not_assessed": "No automated assessment: review this lesion yourself",
    "refer": "Refer",
    "review": "Expert review advised",
    "no_referral": "No referral indicated",
}


@dataclass(frozen=True)
class Verdict:
    level: str                  # one of VERDICTS
    headline: str
    reasons: tuple[str, ...]    # why, most important first
    evidence: str               # what this verdict did at clinics the model was not trained on ("" when unknown)
    firing: tuple[str, ...] = ()  # malignant classes at or above their referral threshold
    borderline: tuple[str, ...] = ()  # malignant classes whose threshold lies within the test-time views' spread

    @property
    def because(self) -> str:
        """The reasons as sentences."""
        return " ".join(r if r.endswith(".") else r + "." for r in self.reasons)

    @property
    def text(self) -> str:
        """One paragraph: headline, reasons, evidence."""
        return " ".join(part for part in (f"{self.headline}.", self.because, self.evidence) if part)


@dataclass(frozen=True)
class TriageRule:
    thresholds: dict[str, float]                      # malignant class code -> probability threshold
    target_sensitivity: float
    clear_threshold: float                            # nevus probability from which a lesion is a clear nevus
    clear_margin: float                               # ... if every malignant class is below this fraction of its
                                                      # referral threshold (1: merely below it)
    out_of_source: dict = field(default_factory=dict)  # figures of each verdict on held-out sources (the card's)

    def __post_init__(self):
        unknown = set(self.thresholds) - set(MALIGNANT_CODES)
        if unknown:
            raise ValueError(f"triage thresholds for non-malignant classes {sorted(unknown)}")
        bad = {c: t for c, t in self.thresholds.items() if not 0 <= t <= 1}
        if bad:
            raise ValueError(f"triage thresholds must be probabilities in [0, 1]: {bad}")
        if not 0 <= self.clear_threshold <= 1:
            raise ValueError(f"the clear-nevus threshold must be a probability in [0, 1], got {self.clear_threshold}")
        if not 0 < self.clear_margin <= 1:
            raise ValueError(f"the clear margin must be a fraction of the referral thresholds in (0, 1], got "
                             f"{self.clear_margin}")

    def limits(self, mel_threshold: float | None = None) -> dict[str, float]:
        """Each malignant class's threshold; `mel_threshold` replaces melanoma's (e.g. a session's own)."""
        return {**self.thresholds, **({"mel": float(mel_threshold)} if mel_threshold is not None else {})}

    def firing(self, probs, mel_threshold: float | None = None) -> tuple[str, ...]:
        """The malignant classes whose probability reaches their threshold ((C,) probabilities)."""
        p = np.asarray(probs, dtype=np.float64)
        limits = self.limits(mel_threshold)
        return tuple(c for c in MALIGNANT_CODES if c in limits and p[CLASS_INDEX[c]] >= limits[c])

    def levels(self, probs: np.ndarray, uncertainty_levels, ood_levels, quality_flags=None) -> np.ndarray:
        """Vectorised verdict levels for (N, C) probabilities and per-image uncertainty / OOD levels (strings) and
        optional per-image booleans 'a quality check fired'."""
        p = np.asarray(probs, dtype=np.float64)
        refer, near = np.zeros(len(p), dtype=bool), np.zeros(len(p), dtype=bool)
        for code, t in self.thresholds.items():
            refer |= p[:, CLASS_INDEX[code]] >= t
            near |= p[:, CLASS_INDEX[code]] >= self.clear_margin * t
        refused = np.isin(np.asarray(ood_levels), REFUSED_LEVELS)
        doubtful = (np.asarray(uncertainty_levels) == "high") | np.isin(np.asarray(ood_levels), GREYED_LEVELS)
        if quality_flags is not None:
            doubtful |= np.asarray(quality_flags, dtype=bool)
        clear = (p[:, CLASS_INDEX[CLEAR_CLASS]] >= self.clear_threshold) & ~near & ~doubtful
        return np.where(refused, "not_assessed", np.where(refer, "refer", np.where(clear, "no_referral", "review")))

    def verdict(self, probs, uncertainty_level: str, ood_level: str, ood_reason: str = "",
                quality_problems: tuple[str, ...] = (), mel_threshold: float | None = None,
                view_probs: np.ndarray | None = None) -> Verdict:
        """The verdict for one image ((C,) probabilities in CLASS_CODES order; `view_probs`: (V, C), each test-time
        view's own probabilities, which mark a call within the noise of its threshold)."""
        if ood_level in REFUSED_LEVELS:
            return Verdict("not_assessed", HEADLINES["not_assessed"],
                           (ood_reason or "The image is not dermoscopy", NOT_ASSESSED_NOTE), "")
        p = np.asarray(probs, dtype=np.float64)
        limits = self.limits(mel_threshold)
        firing = self.firing(p, mel_threshold)
        borderline = straddled(view_probs, {c: t for c, t in limits.items() if c in MALIGNANT_CODES})
        noise = tuple(f"A call within the noise of its threshold: {range_sentence(view_probs, c)}, on both sides of "
                      f"its {limits[c]:.1%}" for c in borderline)
        card_figures = mel_threshold is None or mel_threshold == self.thresholds.get("mel")
        if firing:
            reasons = tuple(f"{CLASS_BY_CODE[c].name} {p[CLASS_INDEX[c]]:.1%} reaches its referral threshold "
                            f"({limits[c]:.1%}): consider dermoscopic follow-up, biopsy or excision" for c in firing)
            top = CLASS_CODES[int(p.argmax())]
            if top not in firing:
                reasons += (f"This outranks the most likely class, {CLASS_BY_CODE[top].name.lower()} "
                            f"({p[CLASS_INDEX[top]]:.1%}): the referral thresholds are set low enough to refer "
                            f"{self.target_sensitivity:.0%} of malignant lesions at clinics the model was not trained "
                            "on, so a malignant class is referred long before it is the most likely",)
            return Verdict("refer", HEADLINES["refer"], reasons + noise,
                           self.evidence("refer") if card_figures else "", firing, borderline)
        doubts = []
        nevus = p[CLASS_INDEX[CLEAR_CLASS]]
        if nevus < self.clear_threshold:
            doubts.append(f"it is not a clear melanocytic nevus (nevus {nevus:.1%}, below the "
                          f"{self.clear_threshold:.1%} that clears a lesion)")
        doubts.extend(f"{CLASS_BY_CODE[c].name.lower()} {p[CLASS_INDEX[c]]:.2%} is not below "
                      f"{self.clear_margin * limits[c]:.2%}, the {self.clear_margin:.0%} of its referral threshold "
                      f"({limits[c]:.2%}) under which a lesion is cleared"
                      for c in MALIGNANT_CODES if c in limits and p[CLASS_INDEX[c]] >= self.clear_margin * limits[c])
        if uncertainty_level == "high":
            doubts.append("the model's uncertainty is high")
        if ood_level == "unusual":
            doubts.append("the image is unlike the training images")
        if ood_level == "maybe_clinical_photo":
            doubts.append("the image may be a camera photo, not dermoscopy")
        doubts.extend(quality_problems)
        if doubts:
            reasons = ("No malignant class reaches its referral threshold, but " + "; ".join(doubts)
                       + ": the result is not reassuring",)
            return Verdict("review", HEADLINES["review"], reasons + noise,
                           self.evidence("review") if card_figures else "", borderline=borderline)
        return Verdict("no_referral", HEADLINES["no_referral"],
                       (f"A clear melanocytic nevus (nevus {nevus:.1%}, at or above the {self.clear_threshold:.1%} "
                        "that clears a lesion), every malignant class well below its referral threshold, the test-time "
                        "views agreeing and the image typical of the training data",) + noise,
                       self.evidence("no_referral") if card_figures else "", borderline=borderline)

    def evidence(self, level: str) -> str:
        """One figure of what this verdict did on held-out sources, in words ('' when the card has none)."""
        figures = (self.out_of_source or {}).get(level)
        if not figures:
            return ""
        if level == "refer":
            return (f"At clinics the model was not trained on, this rule referred {figures['malignant_sensitivity']:.0%}"
                    f" of malignant lesions, and {1 - figures['benign_specificity']:.0%} of benign lesions too.")
        if level == "review":
            return (f"At clinics the model was not trained on, {figures['malignant_share']:.1%} of the images sent to "
                    "review were malignant.")
        spread = figures.get("malignant_share_range")
        spread = (f" ({spread[0]:.0%}-{spread[1]:.0%} across the held-out sources with enough such images)"
                  if spread else "")
        return (f"At clinics the model was not trained on, {figures['malignant_share']:.1%} of the images given this "
                f"verdict were malignant{spread}: it does not rule malignancy out.")

    def to_card(self) -> dict:
        return {"thresholds": dict(self.thresholds), "target_sensitivity": self.target_sensitivity,
                "clear_threshold": self.clear_threshold, "clear_margin": self.clear_margin,
                "out_of_source": self.out_of_source}

    @classmethod
    def from_card(cls, card: ModelCard) -> "TriageRule":
        entry = card.triage
        return cls(dict(entry.thresholds), entry.target_sensitivity, entry.clear_threshold, entry.clear_margin,
                   entry.out_of_source)
