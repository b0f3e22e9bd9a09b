"""Patient context in the diagnosis: a learned shift of mask-CN's class logits (late fusion).

    shift(context) = W (context.encoded() - PatientContext().encoded())          (one value per class)

is added to every view's tempered logits by core.decisions.decision_rule, so an image without any context gets exactly the
image-only probabilities, and each field given moves them by what it was worth on validation. W (classes x
len(ENCODING)) is fitted on the validation set with the image logits fixed (calibration.fit_context); the model card
holds it with the comparison that decided whether it is used (`patient_context.shipped`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data.classes import NUM_CLASSES
from core.data.patient_context import ENCODING, PatientContext
from core.decisions.model_card import CALIBRATE_COMMAND, ModelCard, ModelCardError

NO_CONTEXT = PatientContext().encoded()


@dataclass(frozen=True)
class ContextHead:
    weights: np.ndarray  # (NUM_CLASSES, len(ENCODING))

    def __post_init__(self):
        if np.shape(self.weights) != (NUM_CLASSES, len(ENCODING)):
            raise ValueError(f"context head: expected weights of shape {(NUM_CLASSES, len(ENCODING))}, "
                             f"got {np.shape(self.weights)}")

    def shift(self, contexts: list[PatientContext]) -> np.ndarray:
        """(N, C) logit shifts of N images' contexts (rows of zeros for images without context)."""
        encoded = np.stack([c.encoded() for c in contexts]) - NO_CONTEXT
        return encoded @ np.asarray(self.weights, dtype=np.float64).T

    def to_card(self) -> dict:
        return {"encoding": list(ENCODING), "weights": np.round(np.asarray(self.weights), 6).tolist()}

    @classmethod
    def from_card(cls, card: ModelCard) -> "ContextHead | None":
        """The card's context head when the card says the model uses it (patient_context.shipped), else None."""
        entry = card.patient_context
        if not entry.shipped:
            return None
        if list(entry.head.get("encoding", [])) != list(ENCODING) or "weights" not in entry.head:
            raise ModelCardError(f"{card.where}: the patient-context head was fitted on another context encoding "
                                 f"than {list(ENCODING)}; rebuild the card with `{CALIBRATE_COMMAND}`.")
        return cls(np.array(entry.head["weights"], dtype=np.float64))
