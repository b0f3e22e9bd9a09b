"""Conformal prediction sets: the classes that, together, contain the true diagnosis with a stated probability.

A class is in the set when its probability is at least 1 - q, with q fitted by calibration.out_of_source as the split-
conformal quantile of 1 - p(true class) in *every* source's validation images (the largest binds), so the coverage
is meant to hold per clinic rather than only on the pooled data; the card's `conformal.out_of_source` says how it
held on sources the quantile was fitted without. The top class is always in the set.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.data.classes import CLASS_CODES
from core.decisions.model_card import ModelCard


@dataclass(frozen=True)
class PredictionSets:
    quantile: float                 # q: classes with probability >= 1 - q are in the set
    coverage: float = 0.9           # the target probability that the set holds the true class
    out_of_source: dict = field(default_factory=dict)

    def __post_init__(self):
        if not (0 <= self.quantile <= 1 and 0 < self.coverage < 1):
            raise ValueError(f"quantile {self.quantile} must be in [0, 1] and coverage {self.coverage} in (0, 1)")

    def members(self, probs) -> np.ndarray:
        """(N, C) probabilities -> (N, C) booleans: in the set (the top class always is)."""
        p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        inside = p >= 1 - self.quantile
        inside[np.arange(len(p)), p.argmax(1)] = True
        return inside

    def classes(self, probs) -> list[str]:
        """One image's set, most probable first ((C,) probabilities in CLASS_CODES order)."""
        p = np.asarray(probs, dtype=np.float64)
        inside = self.members(p)[0]
        return [CLASS_CODES[i] for i in np.argsort(-p) if inside[i]]

    def to_card(self) -> dict:
        return {"quantile": self.quantile, "coverage": self.coverage}

    @classmethod
    def from_card(cls, card: ModelCard) -> "PredictionSets":
        entry = card.conformal
        return cls(entry.quantile, entry.coverage, entry.out_of_source)
