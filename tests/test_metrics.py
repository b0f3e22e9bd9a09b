"""core.analysis.metrics against scikit-learn and against synthetic sets with known answers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from core.data.classes import CLASS_CODES
from core.analysis.metrics import (
    MAX_CURVE_POINTS,
    balanced_accuracy,
    binary_auc,
    bootstrap_interval,
    calibration,
    classification_metrics,
    dice,
    fit_temperature,
    jaccard,
    macro_auc,
    segmentation_metrics,
    sensitivity_specificity_at,
    softmax_with_temperature,
)

K = len(CLASS_CODES)


@pytest.mark.parametrize("seed", range(5))
def test_rank_auc_and_balanced_accuracy_equal_sklearns(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random(300) < 0.2
    score = np.round(rng.random(300) + 0.3 * truth, 1)   # rounded: many ties, which count half
    assert binary_auc(truth, score) == pytest.approx(roc_auc_score(truth, score), abs=1e-12)
    y, p, _ = random_set(seed=seed)
    present = [c for c in range(K) if 0 < (y == c).sum() < len(y)]
    assert macro_auc(y, p) == pytest.approx(np.mean([roc_auc_score(y == c, p[:, c]) for c in present]), abs=1e-12)
    pred = p.argmax(1)
    pred[:50] = 6                                         # a predicted-only class must not count
    y[y == 6] = 5
    assert balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)


def test_bootstrap_resamples_whole_lesions():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, 120).astype(str)            # 40 lesions, 1-8 images each
    values = rng.random(120)
    size_of = {g: (groups == g).sum() for g in np.unique(groups)}
    drawn = []

    def mean_of_whole_lesions(i):
        picked, counts = np.unique(groups[i], return_counts=True)
        # a lesion drawn k times brings all its images k times
        assert all(c % size_of[g] == 0 for g, c in zip(picked, counts))
        drawn.append(len(picked))
        return values[i].mean()

    low, high = bootstrap_interval(mean_of_whole_lesions, 120, groups, resamples=200)
    assert low < values.mean() < high
    assert 20 < np.mean(drawn) < 30                            # ~63 % of 40 distinct lesions per resample
    # without groups, rows are drawn one by one, with replacement
    low_rows, high_rows = bootstrap_interval(lambda i: values[i].mean(), 120, resamples=200)
    assert low_rows < values.mean() < high_rows
    assert bootstrap_interval(lambda i: None, 10) == (None, None)


def test_rank_auc_is_undefined_with_one_class():
    assert binary_auc(np.zeros(5, bool), np.arange(5)) is None
    assert binary_auc(np.ones(5, bool), np.arange(5)) is None
    assert macro_auc(np.zeros(5, int), np.full((5, K), 1 / K)) is None


def random_set(n: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, size=n)
    logits = rng.normal(size=(n, K))
    logits[np.arange(n), y] += 1.2  # informative but imperfect
    return y, softmax(logits, axis=1), logits


def all_finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(all_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(all_finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return obj is None or isinstance(obj, (int, str, bool))


def test_classification_matches_sklearn():
    y, p, _ = random_set()
    m = classification_metrics(y, p, CLASS_CODES)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=range(K)).tolist()
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    top2 = np.mean([yy in np.argsort(-pp)[:2] for yy, pp in zip(y, p)])
    top3 = np.mean([yy in np.argsort(-pp)[:3] for yy, pp in zip(y, p)])
    assert m["top2_accuracy"] == pytest.approx(top2)
    assert m["top3_accuracy"] == pytest.approx(top3)
    assert m["accuracy"] < m["top2_accuracy"] < m["top3_accuracy"] < 1.0
    prec = precision_score(y, pred, average=None, labels=range(K), zero_division=0)
    rec = recall_score(y, pred, average=None, labels=range(K), zero_division=0)
    f1 = f1_score(y, pred, average=None, labels=range(K), zero_division=0)
    for i, code in enumerate(CLASS_CODES):
        pc = m["per_class"][code]
        assert pc["precision"] == pytest.approx(prec[i])
        assert pc["recall"] == pytest.approx(rec[i])
        assert pc["f1"] == pytest.approx(f1[i])
        assert pc["support"] == int((y == i).sum())
        assert pc["auc"] == pytest.approx(roc_auc_score(y == i, p[:, i]))
    # JSON-ready: plain types, finite, round-trips
    assert all_finite(m)
    assert json.loads(json.dumps(m)) == m


def test_curves_are_small_finite_and_aligned():
    y, p, _ = random_set(n=3000, seed=1)
    m = classification_metrics(y, p, CLASS_CODES)
    for code in CLASS_CODES:
        roc, pr = m["roc"][code], m["pr"][code]
        assert 2 <= len(roc["fpr"]) <= MAX_CURVE_POINTS
        assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
        assert len(pr["precision"]) == len(pr["recall"]) == len(pr["thresholds"]) <= MAX_CURVE_POINTS
        assert roc["fpr"][0] == 0.0 and roc["tpr"][0] == 0.0 and roc["fpr"][-1] == 1.0 and roc["tpr"][-1] == 1.0
        assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
        assert all(math.isfinite(t) for t in roc["thresholds"] + pr["thresholds"])
        assert max(roc["thresholds"]) <= 1.0
        # the downsampled curve still integrates to the exact AUC (within a little)
        assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(m["per_class"][code]["auc"], abs=0.01)


def test_perfect_predictions():
    y = np.repeat(np.arange(K), 10)
    p = np.full((len(y), K), 0.01)
    p[np.arange(len(y)), y] = 0.94
    m = classification_metrics(y, p, CLASS_CODES)
    for key in ("accuracy", "balanced_accuracy", "top2_accuracy", "top3_accuracy", "macro_auc"):
        assert m[key] == 1.0, key
    for code in CLASS_CODES:
        assert m["per_class"][code] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 10, "auc": 1.0}
    assert m["confusion_matrix"] == (np.eye(K, dtype=int) * 10).tolist()


def test_absent_class_gives_none_auc_not_nan():
    y, p, _ = random_set(n=300)
    keep = y != CLASS_CODES.index("df")
    m = classification_metrics(y[keep], p[keep], CLASS_CODES)
    assert m["per_class"]["df"]["auc"] is None and m["per_class"]["df"]["support"] == 0
    # no recall or F1 for a class with no image (shown "—", not 0.0 %); precision only if the model predicted it
    assert m["per_class"]["df"]["recall"] is None and m["per_class"]["df"]["f1"] is None
    predicted_df = (p[keep].argmax(1) == CLASS_CODES.index("df")).any()
    assert (m["per_class"]["df"]["precision"] is None) == (not predicted_df)
    assert m["roc"]["df"] == {"fpr": [], "tpr": [], "thresholds": []}
    present = [m["per_class"][c]["auc"] for c in CLASS_CODES if c != "df"]
    assert m["macro_auc"] == pytest.approx(np.mean(present))
    json.dumps(m, allow_nan=False)


def test_bad_inputs():
    y, p, _ = random_set(n=20)
    with pytest.raises(ValueError):
        classification_metrics(y, p[:, :5], CLASS_CODES)
    with pytest.raises(ValueError):
        classification_metrics(y[:10], p, CLASS_CODES)
    with pytest.raises(ValueError):
        classification_metrics(np.full(20, K), p, CLASS_CODES)


def test_ece_calibrated_vs_overconfident():
    rng = np.random.default_rng(3)
    n = 20000
    # calibrated: the top-class confidence c is drawn first, then the label is correct with probability c
    conf = rng.uniform(0.3, 1.0, size=n)
    top = rng.integers(0, K, size=n)
    correct = rng.uniform(size=n) < conf
    y = np.where(correct, top, (top + rng.integers(1, K, size=n)) % K)
    p = np.zeros((n, K))
    p[:] = ((1 - conf) / (K - 1))[:, None]
    p[np.arange(n), top] = conf
    cal = calibration(p, y, n_bins=15)
    assert cal["ece"] < 0.02
    assert sum(b["count"] for b in cal["bins"]) == n and len(cal["bins"]) == 15
    assert cal["bins"][0]["lower"] == 0.0 and cal["bins"][-1]["upper"] == 1.0
    for b in cal["bins"]:
        if b["count"]:
            assert b["lower"] <= b["confidence"] <= b["upper"]
            assert b["accuracy"] == pytest.approx(b["confidence"], abs=0.06)
        else:
            assert b["confidence"] is None and b["accuracy"] is None
    # overconfident: same labels, everything claimed at 0.99
    over = np.full((n, K), 0.01 / (K - 1))
    over[np.arange(n), top] = 0.99
    bad = calibration(over, y, n_bins=15)
    accuracy = float((top == y).mean())
    assert bad["ece"] == pytest.approx(0.99 - accuracy, abs=1e-9)
    assert bad["ece"] > 0.2
    assert [b["count"] for b in bad["bins"]][-1] == n
    json.dumps(bad, allow_nan=False)


def test_ece_hand_computed():
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    cal = calibration(p, y, n_bins=10)
    # bins: (0.8, 0.9] -> conf .9, acc .5, n 2; (0.5, 0.6] -> .6, 1, n 1; (0.6, 0.7] -> .7, 1, n 1
    expected = 2 / 4 * 0.4 + 1 / 4 * 0.4 + 1 / 4 * 0.3
    assert cal["ece"] == pytest.approx(expected)
    assert cal["bins"][8]["count"] == 2 and cal["bins"][5]["count"] == 1 and cal["bins"][6]["count"] == 1


def test_temperature_recovers_generating_temperature():
    rng = np.random.default_rng(7)
    n = 8000
    logits = rng.normal(scale=4.0, size=(n, K))
    # labels sampled from softmax(logits / 2): the true temperature is 2
    probs = softmax(logits / 2.0, axis=1)
    y = (probs.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    t = fit_temperature(logits, y)
    assert isinstance(t, float) and t > 0
    assert t == pytest.approx(2.0, rel=0.10)
    nll = lambda T: -np.log(softmax_with_temperature(logits, T)[np.arange(n), y]).mean()  # noqa: E731
    assert nll(t) <= nll(1.0) and nll(t) <= nll(t * 1.2) and nll(t) <= nll(t / 1.2)
    # sharpening case: labels generated at T = 0.5
    y_sharp = (softmax(logits / 0.5, axis=1).cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    assert fit_temperature(logits, y_sharp) == pytest.approx(0.5, rel=0.10)


def test_softmax_with_temperature():
    z = np.array([[2.0, 0.0, -1.0]])
    np.testing.assert_allclose(softmax_with_temperature(z, 1.0), softmax(z, axis=1))
    np.testing.assert_allclose(softmax_with_temperature(z, 2.0), softmax(z / 2, axis=1))
    hot = softmax_with_temperature(z, 100.0)
    assert hot.max() - hot.min() < 0.05
    np.testing.assert_allclose(softmax_with_temperature(np.array([[1000.0, 0.0]]), 1.0), [[1.0, 0.0]])
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError):
            softmax_with_temperature(z, bad)


def test_dice_jaccard_known_values():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True  # 50 px
    b[:, 3:8] = True  # 50 px, overlap 20 px, union 80 px
    assert dice(a, b) == pytest.approx(2 * 20 / 100)
    assert jaccard(a, b) == pytest.approx(20 / 80)
    assert dice(a, a) == 1.0 and jaccard(a, a) == 1.0
    assert dice(a, ~a) == 0.0 and jaccard(a, ~a) == 0.0
    empty = np.zeros((10, 10), bool)
    assert dice(empty, empty) == 1.0 and jaccard(empty, empty) == 1.0
    assert dice(empty, a) == 0.0 and jaccard(empty, a) == 0.0
    # 0/255 uint8 masks behave like bool
    assert dice(a.astype(np.uint8) * 255, b.astype(np.uint8) * 255) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        dice(a, np.zeros((5, 5), bool))


def test_segmentation_metrics_isic_threshold():
    def pair(overlap_cols: int):
        t = np.zeros((10, 10), bool)
        t[:, :5] = True
        p = np.zeros((10, 10), bool)
        p[:, 5 - overlap_cols : 10 - overlap_cols] = True
        return p, t

    preds, trues = zip(*[pair(5), pair(4), pair(2)])  # Jaccard 1.0, 40/60, 20/80
    j = [1.0, 40 / 60, 20 / 80]
    d = [1.0, 0.8, 0.4]
    m = segmentation_metrics(list(preds), list(trues))
    assert m["jaccard_mean"] == pytest.approx(np.mean(j))
    assert m["dice_mean"] == pytest.approx(np.mean(d))
    assert m["jaccard_thresholded_065"] == pytest.approx((1.0 + 40 / 60 + 0.0) / 3)  # 0.25 < 0.65 -> 0
    assert m["dice_per_image"] == [1.0, 0.8, 0.4]
    json.dumps(m, allow_nan=False)
    m2 = segmentation_metrics([np.ones((4, 4)) > 0], [np.ones((4, 4)) > 0])
    assert m2["dice_per_image"] == [1.0]
    with pytest.raises(ValueError):
        segmentation_metrics([a for a in preds], list(trues)[:2])


def test_sensitivity_specificity():
    s = np.array([0.9, 0.8, 0.4, 0.3, 0.2, 0.7])
    t = np.array([1, 1, 1, 0, 0, 0], bool)
    sens, spec = sensitivity_specificity_at(s, t, 0.5)
    assert sens == pytest.approx(2 / 3) and spec == pytest.approx(2 / 3)
    assert sensitivity_specificity_at(s, t, 0.0) == (1.0, 0.0)
    assert sensitivity_specificity_at(s, t, 1.01) == (0.0, 1.0)
    assert sensitivity_specificity_at(s[:3], t[:3], 0.5)[1] is None  # no negatives
    assert isinstance(sens, float)


def test_logit_adjustment_recovers_rare_class_recall():
    """A classifier biased towards the majority class: the tau fitted on held-out logits raises balanced accuracy,
    and tau = 0 leaves the decisions unchanged."""
    from core.analysis.metrics import fit_logit_adjustment, logit_adjustment

    rng = np.random.default_rng(0)
    y = np.array([0] * 900 + [1] * 100)
    logits = np.stack([np.zeros(1000), np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.0, 1000) - 1.5], axis=1)
    priors = np.bincount(y) / len(y)
    base = balanced_accuracy_score(y, logits.argmax(1))
    tau, score = fit_logit_adjustment(logits, y, priors)
    assert tau > 0 and score > base + 0.1
    assert np.array_equal((logits + logit_adjustment(priors, 0.0)).argmax(1), logits.argmax(1))
