"""The one melanoma referral rule: a threshold on a melanoma score, chosen on validation data for a target
sensitivity (triage), stored in the model card and applied by the Analyzer, Batch, the predict CLI, the PDF and the
Model performance page alike."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data.classes import CLASS_INDEX, MALIGNANT_INDICES
from core.decisions.model_card import ModelCard

SCORES = {
    "mel": "probability of melanoma",
    "malignant": "probability of a malignant class (melanoma + basal cell carcinoma + actinic keratosis / "
                 "intraepithelial carcinoma)",
}
REFER_TEXT = "Melanoma score above the referral threshold: consider dermoscopic follow-up or excision."
BELOW_TEXT = "Melanoma score below the referral threshold."
VALIDATION_SOURCES = {"ham10000": "HAM10000 val", "isic2017": "ISIC 2017 (validation part of its train set)",
                      "vidir_molemax": "HAM10000 vidir_molemax val", "vidir_modern": "HAM10000 vidir_modern val",
                      "rosendahl": "HAM10000 rosendahl val", "vienna_dias": "HAM10000 vienna_dias val"}


def melanoma_score(probs, kind: str) -> np.ndarray:
    """(N, C) or (C,) class probabilities -> the score the referral threshold applies to."""
    p = np.asarray(probs, dtype=np.float64)
    if kind == "mel":
        return p[..., CLASS_INDEX["mel"]]
    if kind == "malignant":
        return p[..., list(MALIGNANT_INDICES)].sum(-1)
    raise ValueError(f"unknown melanoma score {kind!r}; choose {', '.join(SCORES)}")


@dataclass(frozen=True)
class ReferralRule:
    score: str                   # a key of SCORES
    threshold: float
    target_sensitivity: float

    def score_of(self, probs) -> np.ndarray:
        return melanoma_score(probs, self.score)

    def refer(self, probs, threshold: float | None = None) -> np.ndarray:
        """True where the score reaches the threshold (the card's, or a session's own)."""
        return self.score_of(probs) >= (self.threshold if threshold is None else threshold)

    def describe(self, threshold: float | None = None) -> str:
        t = self.threshold if threshold is None else threshold
        return f"{SCORES[self.score]} >= {t:.3f}"

    def to_card(self) -> dict:
        return {"score": self.score, "threshold": self.threshold, "target_sensitivity": self.target_sensitivity}

    @classmethod
    def from_card(cls, card: ModelCard) -> "ReferralRule":
        entry = card.referral
        return cls(entry.score, entry.threshold, entry.target_sensitivity)


def validation_sources_text(fit: dict) -> str:
    """' in each validation source (HAM10000 val: 166 melanomas, ...)' when the card's referral threshold was fitted
    per validation source (its `referral.fit`: calibration.fit_rules.fit_referral); '' for a fit without that."""
    counts = fit.get("validation_melanomas_per_source")
    if not counts:
        return ""
    binding = fit.get("min_melanomas_to_bind")
    which = f"each validation source with at least {binding} melanomas" if binding else "each validation source"
    return f" in {which} (" + ", ".join(f"{VALIDATION_SOURCES.get(s, s)}: {n} melanomas"
                                        for s, n in counts.items()) + ")"
