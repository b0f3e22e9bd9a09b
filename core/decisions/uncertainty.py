"""Uncertainty in words: a score that ranks likely errors, cut into low / moderate / high on validation data so
that each level carries a measured error rate of the top prediction.

Candidate scores (calibration.evaluate picks the one with the smallest area under the validation risk-coverage curve):
  max_probability   1 - the top class probability
  entropy           predictive entropy / log(C)
  tta_disagreement  mean total-variation distance of each view's probabilities from their average
  knn_distance      1 - mean cosine similarity to the k nearest reference cases (core.lesion.retrieval)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.decisions.model_card import ModelCard

LEVELS = ("low", "moderate", "high")
SCORE_NAMES = ("max_probability", "entropy", "tta_disagreement", "knn_distance")


def probability_scores(probs: np.ndarray, view_probs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The probability-based scores for (N, C) probabilities (and (V, N, C) per-view probabilities)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1)
    scores = {"max_probability": 1 - p.max(-1), "entropy": -(p * np.log(p)).sum(-1) / np.log(p.shape[-1])}
    if view_probs is not None and len(view_probs) > 1:
        scores["tta_disagreement"] = 0.5 * np.abs(view_probs - view_probs.mean(0)).sum(-1).mean(0)
    return scores


@dataclass(frozen=True)
class UncertaintyLevels:
    score: str                                       # a key of SCORE_NAMES
    cuts: tuple[float, float]                        # low < cuts[0] <= moderate < cuts[1] <= high
    error_rates: dict = field(default_factory=dict)  # level -> top-1 error rate on validation
    out_of_source: dict = field(default_factory=dict)  # level -> (error rate, [lowest, highest] per source) on
                                                       # sources the levels were fitted without
                                                       # (calibration.out_of_source)

    def level(self, value: float) -> str:
        return LEVELS[int(np.searchsorted(self.cuts, value, side="right"))]

    def levels(self, values) -> np.ndarray:
        return np.array(LEVELS)[np.searchsorted(self.cuts, np.asarray(values), side="right")]

    def sentence(self, level: str) -> str:
        """The level with its measured error rate: out of source where the card has it, else on validation."""
        if level in self.out_of_source:
            rate, (low, high) = self.out_of_source[level]
            spread = (f"{low:.0%} on each held-out source" if f"{low:.0%}" == f"{high:.0%}" else
                      f"{low:.0%}-{high:.0%} across the held-out sources")
            spread += " with enough images at this level"
            return (f"Uncertainty {level}. On images from clinics the model was not trained on, the top prediction at "
                    f"this level was wrong {rate:.0%} of the time ({spread}).")
        rate = self.error_rates.get(level)
        measured = "" if rate is None else (f" On validation images, the top prediction at this level was wrong "
                                            f"{rate:.0%} of the time.")
        return f"Uncertainty {level}.{measured}"

    def to_card(self) -> dict:
        return {"score": self.score, "cuts": list(self.cuts), "error_rates": dict(self.error_rates)}

    @classmethod
    def from_card(cls, card: ModelCard) -> "UncertaintyLevels":
        entry = card.uncertainty
        ranges = entry.out_of_source_error_range
        held_out = {k: (v, ranges[k]) for k, v in entry.out_of_source_error_rates.items() if k in ranges}
        return cls(entry.score, entry.cuts, dict(entry.error_rates), held_out)
