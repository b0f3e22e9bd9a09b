"""How far an image's probabilities move across the test-time views (the image flipped and rotated): the noise of
one call. A referral threshold that lies inside a class's range of views is a call within that noise, which the
verdict says, and a confident top class whose views disagree explains a "moderate" uncertainty."""
from __future__ import annotations

import numpy as np

from core.data.classes import CLASS_BY_CODE, CLASS_INDEX


def class_range(view_probs: np.ndarray, code: str) -> tuple[float, float]:
    """(lowest, highest) probability of class `code` over the views ((V, C) probabilities)."""
    column = np.asarray(view_probs, dtype=np.float64)[:, CLASS_INDEX[code]]
    return float(column.min()), float(column.max())


def straddled(view_probs: np.ndarray | None, thresholds: dict[str, float]) -> tuple[str, ...]:
    """The classes (in `thresholds` order) whose threshold some views reach and others do not."""
    if view_probs is None or len(view_probs) < 2:
        return ()
    return tuple(code for code, t in thresholds.items()
                 if class_range(view_probs, code)[0] < t <= class_range(view_probs, code)[1])


def range_sentence(view_probs: np.ndarray, code: str) -> str:
    """'across the 8 test-time views (the image flipped and rotated), basal cell carcinoma ranges from 1.9% to
    3.4%'."""
    low, high = class_range(view_probs, code)
    return (f"across the {len(view_probs)} test-time views (the image flipped and rotated), "
            f"{CLASS_BY_CODE[code].name.lower()} ranges from {low:.1%} to {high:.1%}")
