"""Classification, calibration and segmentation metrics for the model card (scikit-learn / SciPy based).

Every function returns plain Python ``float`` / ``int`` / ``list`` / ``dict`` values so the results can go
straight into ``weights/model_card.json``; curves are downsampled to at most ``MAX_CURVE_POINTS`` points and
contain finite numbers only.  Undefined values (e.g. the AUC of a class absent from ``y_true``) are ``None``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from scipy.special import softmax as _softmax
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_curve,
    top_k_accuracy_score,
)

__all__ = [
    "MAX_CURVE_POINTS",
    "balanced_accuracy",
    "binary_auc",
    "bootstrap_interval",
    "calibration",
    "classification_metrics",
    "dice",
    "fit_temperature",
    "jaccard",
    "macro_auc",
    "segmentation_metrics",
    "sensitivity_specificity_at",
    "softmax_with_temperature",
    "value_with_ci",
]

MAX_CURVE_POINTS = 101
ISIC_JACCARD_THRESHOLD = 0.65


# ----------------------------------------------------------------------------------------- ranking figures
def binary_auc(truth, score) -> float | None:
    """ROC AUC of ``score`` for the boolean ``truth``, from ranks (Mann-Whitney U, ties count half): the value
    sklearn's roc_auc_score gives, at a fraction of its cost (a bootstrap interval computes thousands).
    None when truth holds one class only."""
    truth = np.asarray(truth, dtype=bool).ravel()
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(score, dtype=np.float64).ravel())
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auc(labels, probs) -> float | None:
    """Mean one-vs-rest AUC over the classes (columns of probs) that have positives and negatives in labels."""
    labels = np.asarray(labels)
    aucs = [binary_auc(labels == c, probs[:, c]) for c in range(probs.shape[1])]
    aucs = [a for a in aucs if a is not None]
    return float(np.mean(aucs)) if aucs else None


def balanced_accuracy(labels, pred) -> float:
    """Mean recall over the classes present in labels (sklearn's balanced_accuracy_score, without its warnings)."""
    labels, pred = np.asarray(labels), np.asarray(pred)
    return float(np.mean([(pred[labels == c] == c).mean() for c in np.unique(labels)]))


# ----------------------------------------------------------------------------------------- helpers
def _downsample(n: int, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` evenly spaced points of a length-n curve, both ends kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(int))


def _finite_list(a: np.ndarray, posinf: float = 1.0, neginf: float = 0.0) -> list[float]:
    arr = np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0, posinf=posinf, neginf=neginf)
    return [float(v) for v in arr]


def _check_probs(probs, n_classes: int | None = None) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be N x K, got shape {p.shape}")
    if n_classes is not None and p.shape[1] != n_classes:
        raise ValueError(f"probs has {p.shape[1]} columns but {n_classes} class names were given")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or inf")
    return p


# ---------------------------------------------------------------------------------- classification
def classification_metrics(y_true, probs, class_names: Sequence[str]) -> dict:
    """Model-card classification metrics for integer labels ``y_true`` (N,) and probabilities ``probs`` (N, K).

    Keys: accuracy, balanced_accuracy, top2_accuracy, top3_accuracy, macro_auc (one-vs-rest, mean over classes
    present in y_true), per_class{code: {precision, recall, f1, support, auc}} (precision None for a class never
    predicted; recall, F1 and AUC None for one absent from y_true), confusion_matrix (rows true,
    cols predicted, class_names order), roc{code: {fpr, tpr, thresholds}}, pr{code: {precision, recall,
    thresholds}}, n (int).  Predictions are the arg-max of ``probs``.  The card's ``calibration`` entry is
    {"before": calibration(raw_probs, y), "after": calibration(calibrated_probs, y)}, built by the caller.
    """
    names = [str(c) for c in class_names]
    k = len(names)
    p = _check_probs(probs, k)
    y = np.asarray(y_true).astype(int).ravel()
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} probability rows")
    if len(y) == 0:
        raise ValueError("no samples")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must be in 0..{k - 1}")
    labels = np.arange(k)
    pred = p.argmax(axis=1)

    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    per_class: dict[str, dict] = {}
    roc: dict[str, dict] = {}
    pr: dict[str, dict] = {}
    aucs: list[float] = []
    for i, code in enumerate(names):
        is_i = y == i
        auc = None
        if 0 < is_i.sum() < len(y):
            auc = binary_auc(is_i, p[:, i])
            aucs.append(auc)
            fpr, tpr, thr = roc_curve(is_i, p[:, i])
            idx = _downsample(len(fpr))
            roc[code] = {
                "fpr": _finite_list(fpr[idx]),
                "tpr": _finite_list(tpr[idx]),
                "thresholds": _finite_list(thr[idx], posinf=1.0),  # sklearn's leading inf -> 1.0
            }
            precision, recall, thr_pr = precision_recall_curve(is_i, p[:, i])
            # precision/recall have one more point than thresholds (the (recall 0, precision 1) end point);
            # give that end point the threshold 1.0 so the three lists align.
            thr_pr = np.append(thr_pr, 1.0)
            idx = _downsample(len(precision))
            pr[code] = {
                "precision": _finite_list(precision[idx]),
                "recall": _finite_list(recall[idx]),
                "thresholds": _finite_list(thr_pr[idx]),
            }
        else:
            roc[code] = {"fpr": [], "tpr": [], "thresholds": []}
            pr[code] = {"precision": [], "recall": [], "thresholds": []}
        # Undefined, not 0: a class absent from the images has no recall (its F1 is 0 whatever the model does), one
        # never predicted no precision. (A researcher's folder often lacks classes; 0.0 % read as "missed them all".)
        predicted = bool((pred == i).any())
        per_class[code] = {
            "precision": float(prec[i]) if predicted else None,
            "recall": float(rec[i]) if support[i] else None,
            "f1": float(f1[i]) if support[i] else None,
            "support": int(support[i]),
            "auc": auc,
        }

    def top_k(kk: int) -> float:
        if kk >= k:
            return 1.0
        return float(top_k_accuracy_score(y, p, k=kk, labels=labels))

    return {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "top2_accuracy": top_k(2),
        "top3_accuracy": top_k(3),
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).astype(int).tolist(),
        "roc": roc,
        "pr": pr,
    }


# ------------------------------------------------------------------------------------- calibration
def calibration(probs, y_true, n_bins: int = 15) -> dict:
    """Expected calibration error of the top-class confidence with ``n_bins`` equal-width bins over (0, 1].

    Returns {ece, n_bins, bins: [{lower, upper, confidence, accuracy, count}]} for every bin (empty bins have
    count 0 and confidence / accuracy None).  ECE = sum_b (count_b / N) * |accuracy_b - confidence_b|
    (Guo et al., ICML 2017).
    """
    p = _check_probs(probs)
    y = np.asarray(y_true).astype(int).ravel()
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} probability rows")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds lower < conf <= upper (conf == 0 goes to the first bin)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    bins = []
    ece = 0.0
    n = len(y)
    for b in range(n_bins):
        sel = which == b
        count = int(sel.sum())
        if count:
            c, a = float(conf[sel].mean()), float(correct[sel].mean())
            ece += count / n * abs(a - c)
        else:
            c = a = None
        bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "confidence": c, "accuracy": a,
                     "count": count})
    return {"ece": float(ece) if n else None, "n_bins": int(n_bins), "bins": bins}


def softmax_with_temperature(logits, T: float) -> np.ndarray:
    """Row-wise softmax of ``logits / T`` (float64 N x K)."""
    if not (T > 0 and math.isfinite(T)):
        raise ValueError(f"temperature must be a positive finite number, got {T!r}")
    z = np.asarray(logits, dtype=np.float64)
    return _softmax(z / float(T), axis=-1)


def fit_temperature(logits, y_true, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising the mean NLL of softmax(logits / T).

    One-dimensional bounded minimisation over log T (SciPy, Brent's method); the NLL is convex in 1/T, so
    the optimum is unique.  Returns a Python float within ``bounds``.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true).astype(int).ravel()
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"logits must be N x K with N = len(y_true) > 0, got {z.shape} and {len(y)} labels")
    if not np.isfinite(z).all():
        raise ValueError("logits contains NaN or inf")
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / math.exp(log_t), axis=1)[rows, y].mean())

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))


def sensitivity_specificity_at(probs_of_class, is_class, threshold: float) -> tuple[float | None, float | None]:
    """Sensitivity and specificity when ``probs_of_class >= threshold`` is called positive.

    None where undefined (no positives for sensitivity, no negatives for specificity).
    """
    s = np.asarray(probs_of_class, dtype=np.float64).ravel()
    t = np.asarray(is_class).astype(bool).ravel()
    if len(s) != len(t):
        raise ValueError("probs_of_class and is_class differ in length")
    called = s >= threshold
    pos, neg = int(t.sum()), int((~t).sum())
    sens = float((called & t).sum() / pos) if pos else None
    spec = float((~called & ~t).sum() / neg) if neg else None
    return sens, spec


# ------------------------------------------------------------------------------------ segmentation
def _as_bool(mask) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype == bool:
        return m
    return m > (127 if m.size and m.max() > 1 else 0)


def dice(a, b) -> float:
    """Dice coefficient 2|A n B| / (|A| + |B|) of two binary masks; 1.0 when both are empty."""
    x, y = _as_bool(a), _as_bool(b)
    if x.shape != y.shape:
        raise ValueError(f"mask shapes differ: {x.shape} vs {y.shape}")
    total = int(x.sum()) + int(y.sum())
    return 1.0 if total == 0 else float(2 * int((x & y).sum()) / total)


def jaccard(a, b) -> float:
    """Jaccard index |A n B| / |A u B| of two binary masks; 1.0 when both are empty."""
    x, y = _as_bool(a), _as_bool(b)
    if x.shape != y.shape:
        raise ValueError(f"mask shapes differ: {x.shape} vs {y.shape}")
    union = int((x | y).sum())
    return 1.0 if union == 0 else float(int((x & y).sum()) / union)


def segmentation_metrics(pred_masks: Sequence, true_masks: Sequence) -> dict:
    """Mean Dice / Jaccard over image pairs and the ISIC 2018 thresholded Jaccard.

    ``jaccard_thresholded_065``: per-image Jaccard, values below 0.65 count as 0, then the mean
    (ISIC 2018 Task 1 ranking metric).  ``dice_per_image`` is rounded to 4 decimals.
    """
    if len(pred_masks) != len(true_masks):
        raise ValueError(f"{len(pred_masks)} predicted masks but {len(true_masks)} reference masks")
    if len(pred_masks) == 0:
        raise ValueError("no masks")
    dices = np.array([dice(p, t) for p, t in zip(pred_masks, true_masks)])
    jacs = np.array([jaccard(p, t) for p, t in zip(pred_masks, true_masks)])
    return {
        "n": int(len(dices)),
        "dice_mean": float(dices.mean()),
        "jaccard_mean": float(jacs.mean()),
        "jaccard_thresholded_065": float(np.where(jacs >= ISIC_JACCARD_THRESHOLD, jacs, 0.0).mean()),
        "dice_per_image": [round(float(d), 4) for d in dices],
    }


# ---------------------------------------------------------------------------------- decision rule
def logit_adjustment(priors, tau: float) -> np.ndarray:
    """Per-class logit offsets -tau * log(prior) (Menon et al., ICLR 2021): tau = 0 keeps the training priors,
    tau = 1 treats all classes as equally likely a priori (the balanced-accuracy optimum for a calibrated model)."""
    p = np.asarray(priors, dtype=np.float64)
    return -float(tau) * np.log(p / p.sum())


def fit_logit_adjustment(logits, y_true, priors, taus=None) -> tuple[float, float]:
    """The tau (grid 0..2) that maximises balanced accuracy on (validation) logits; returns (tau, balanced_acc).

    One parameter chosen on validation: it trades overall accuracy for sensitivity to rare classes."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true).astype(int).ravel()
    best_tau, best_score = 0.0, -1.0
    for tau in (np.linspace(0.0, 2.0, 21) if taus is None else taus):
        score = balanced_accuracy(y, (z + logit_adjustment(priors, tau)).argmax(1))
        if score > best_score + 1e-9:
            best_tau, best_score = float(tau), float(score)
    return best_tau, best_score


def jaccard_from_dice(dice: np.ndarray) -> np.ndarray:
    """Per-image Jaccard from per-image Dice (exact identity J = D / (2 - D)), for the distribution plot when
    the model card lists only Dice per image."""
    dice = np.asarray(dice, dtype=float)
    return dice / (2.0 - dice)


# ------------------------------------------------------------------------------------ uncertainty of a figure
def bootstrap_interval(statistic, n: int, groups=None, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` rows.

    With ``groups`` (e.g. lesion ids) whole groups are resampled, so several images of one lesion move together.
    Resamples where the statistic is undefined (None / NaN, e.g. an AUC without positives) are skipped."""
    rng = np.random.default_rng(seed)
    if groups is None:
        order, sizes = np.arange(n), np.ones(n, dtype=int)
    else:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        order, sizes = np.argsort(inverse, kind="stable"), np.bincount(inverse)
    starts = np.cumsum(sizes) - sizes                       # group g's rows: order[starts[g] : starts[g] + sizes[g]]
    values = []
    for _ in range(resamples):
        picked = rng.integers(0, len(sizes), len(sizes))
        lengths = sizes[picked]
        shift = np.repeat(starts[picked] - (np.cumsum(lengths) - lengths), lengths)
        value = statistic(order[np.arange(lengths.sum()) + shift])
        if value is not None and np.isfinite(value):
            values.append(value)
    if not values:
        return None, None
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float | None, float | None]:
    """Wilson score 95 % interval of a proportion successes / n ((None, None) for n = 0). Unlike a bootstrap it
    stays informative at 0 or n successes: 0 refusals in 300 images is [0, 1.3 %], not [0, 0]."""
    if n <= 0:
        return None, None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def value_with_ci(statistic, n: int, groups=None, resamples: int = 1000) -> dict:
    """{"value": statistic on all n rows, "ci95": its bootstrap_interval}, as the model card and reports hold it."""
    value = statistic(np.arange(n))
    low, high = bootstrap_interval(statistic, n, groups, resamples=resamples)
    return {"value": None if value is None else float(value), "ci95": [low, high]}


def format_with_ci(entry: dict | None, digits: int = 3) -> str:
    """A value_with_ci entry as "0.943 [0.915, 0.970]" ("-" without a value, no brackets without an interval)."""
    if entry is None or entry.get("value") is None:
        return "-"
    low, high = entry["ci95"]
    ci = "" if low is None else f" [{low:.{digits}f}, {high:.{digits}f}]"
    return f"{entry['value']:.{digits}f}{ci}"


def risk_coverage(scores, errors) -> dict:
    """Selective prediction: images accepted in order of increasing uncertainty score; at each coverage, the error
    rate (risk) of the accepted ones. Returns coverage and risk curves (downsampled) and their area (AURC)."""
    s = np.asarray(scores, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    risk = np.cumsum(e[order]) / np.arange(1, len(e) + 1)
    coverage = np.arange(1, len(e) + 1) / len(e)
    keep = _downsample(len(e))
    return {"aurc": float(risk.mean()), "coverage": _finite_list(coverage[keep]), "risk": _finite_list(risk[keep])}
