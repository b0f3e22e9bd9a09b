"""How mask-CN's logits become the class probabilities every surface shows (app, batch, CLI, PDF, evaluation).

probabilities = mean over the test-time-augmentation views of softmax((logits_view + offsets) / temperature + shift),
shift = the patient-context shift (core.decisions.context_head; zero without context).
The number of views, the per-class logit offsets (a class-prior adjustment, all zero when validation did not
favour one) and the temperature are fitted on validation data by calibration.evaluate and stored in the model card.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from core.data.classes import NUM_CLASSES
from core.decisions.model_card import ModelCard
from core.imaging.tta import views_for


@dataclass(frozen=True)
class DecisionRule:
    views: int = 1                                   # 1, 4 (flips) or 8 (dihedral group)
    temperature: float = 1.0
    logit_offsets: tuple[float, ...] = field(default=(0.0,) * NUM_CLASSES)

    @property
    def view_ids(self) -> tuple[int, ...]:
        return views_for(self.views)

    def probabilities(self, logits_views, shift=None) -> np.ndarray:
        """(V, N, C) logits of views 0..V-1 (at least self.views of them) -> (N, C) probabilities; shift: (N, C)
        patient-context logit shifts (core.decisions.context_head) or None."""
        z = torch.as_tensor(np.asarray(logits_views, dtype=np.float64))[: self.views]
        offsets = torch.tensor(self.logit_offsets, dtype=torch.float64)
        tempered = (z + offsets) / self.temperature
        if shift is not None:
            tempered = tempered + torch.as_tensor(np.asarray(shift, dtype=np.float64))
        return torch.softmax(tempered, dim=-1).mean(0).numpy()

    def single_view(self) -> "DecisionRule":
        """The same rule on one view: each view's own probabilities (the TTA-disagreement uncertainty score, the
        one-view ablation)."""
        return replace(self, views=1)

    def to_card(self) -> dict:
        return {"views": self.views, "temperature": self.temperature, "logit_offsets": list(self.logit_offsets)}

    @classmethod
    def from_card(cls, card: ModelCard) -> "DecisionRule":
        entry = card.decision_rule
        return cls(entry.views, entry.temperature, entry.logit_offsets)
