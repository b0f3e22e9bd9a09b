"""Reliability rules fitted to hold in *every* source they are fitted on (the worst source binds), so that they have
a chance to hold at a clinic none of the data comes from. calibration.out_of_source fits each one without a source and
measures it on that source (leave one source out), then fits the shipped rule on all sources.

Every function takes per-image arrays and `sources` (the acquisition source of each image, core.data.acquisition) and
returns plain numbers; applying them is core's job (core.decisions.triage, core.decisions.uncertainty, core.decisions.ood, core.decisions.conformal).
"""
from __future__ import annotations

import math

import numpy as np

from core.data.classes import CLASS_INDEX

MIN_POSITIVES = 10       # a source binds a class's referral threshold only with at least this many cases of the class
MIN_IMAGES = 50          # a source binds the uncertainty cut / conformal quantile only with at least this many images


def referral_threshold(score: np.ndarray, positive: np.ndarray, sources: np.ndarray, target: float) -> dict:
    """The largest threshold on `score` with sensitivity >= target in every source holding >= MIN_POSITIVES
    positives (all positives pooled when none does)."""
    per_source = {}
    for source in np.unique(sources):
        values = np.sort(score[positive & (sources == source)])
        if len(values) >= MIN_POSITIVES:
            per_source[str(source)] = float(values[int(math.floor((1 - target) * len(values)))])
    if not per_source:
        values = np.sort(score[positive])
        per_source["pooled"] = float(values[int(math.floor((1 - target) * len(values)))]) if len(values) else 1.0
    return {"threshold": min(per_source.values()), "threshold_per_source": per_source}


def class_referral_thresholds(probs: np.ndarray, labels: np.ndarray, sources: np.ndarray, codes: tuple[str, ...],
                              target: float) -> dict[str, float]:
    """One threshold per malignant class on its own probability, each the largest with sensitivity >= target for
    that class in every source with enough cases of it."""
    return {code: referral_threshold(probs[:, CLASS_INDEX[code]], labels == CLASS_INDEX[code], sources, target)["threshold"]
            for code in codes}


def low_uncertainty_cut(score: np.ndarray, errors: np.ndarray, sources: np.ndarray, max_error: float) -> float:
    """The largest cut such that images scoring below it err <= max_error in every source with >= MIN_IMAGES images
    (0: no image is 'low' when even the most certain images of some source err more)."""
    cuts = []
    for source in np.unique(sources):
        inside = sources == source
        if inside.sum() < MIN_IMAGES:
            continue
        s, e = score[inside], errors[inside].astype(float)
        order = np.argsort(s, kind="stable")
        running = np.cumsum(e[order]) / np.arange(1, len(s) + 1)
        ok = np.flatnonzero(running <= max_error)
        count = int(ok.max()) + 1 if len(ok) else 0
        cuts.append(float(s[order][count]) if count < len(s) else float(s.max()) + 1e-9)
    return min(cuts) if cuts else 0.0


def clear_threshold(score: np.ndarray, malignant: np.ndarray, sources: np.ndarray, max_share: float) -> float:
    """The smallest threshold on `score` (the nevus probability) such that the images at or above it are malignant
    <= max_share, in every source with >= MIN_IMAGES images (1.0: none is cleared when some source's most confident
    images already hold more malignant lesions than that, or fewer than MIN_IMAGES pass)."""
    cuts = []
    for source in np.unique(sources):
        inside = sources == source
        if inside.sum() < MIN_IMAGES:
            continue
        order = np.argsort(-score[inside], kind="stable")
        s, m = score[inside][order], malignant[inside][order].astype(float)
        share = np.cumsum(m) / np.arange(1, len(s) + 1)
        ok = np.flatnonzero((share <= max_share) & (np.arange(1, len(s) + 1) >= MIN_IMAGES))
        cuts.append(float(s[ok.max()]) if len(ok) else 1.0)
    return max(cuts) if cuts else 1.0


def conformal_quantile(p_true: np.ndarray, sources: np.ndarray, coverage: float) -> float:
    """Split-conformal threshold for prediction sets {c: p_c >= 1 - q} with `coverage` in every source: the largest
    per-source finite-sample quantile of 1 - p(true class) over sources with >= MIN_IMAGES images."""
    quantiles = []
    for source in np.unique(sources):
        nonconformity = 1 - p_true[sources == source]
        n = len(nonconformity)
        if n < MIN_IMAGES:
            continue
        level = min(1.0, math.ceil((n + 1) * coverage) / n)
        quantiles.append(float(np.quantile(nonconformity, level, method="higher")))
    return max(quantiles) if quantiles else 1.0
