"""Everything the model card decides on validation data: the decision rule (test-time-augmentation views, logit
adjustment, temperature), the melanoma referral threshold, the uncertainty levels, the OOD thresholds and the PCA
size of the similar-cases index.

Validation = HAM10000 val + the held-out part of ISIC 2017 train; nothing here ever sees a test split.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize_scalar
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA

from core.data.classes import CLASS_INDEX, NUM_CLASSES
from core.decisions.decision_rule import DecisionRule
from core.analysis.metrics import binary_auc, calibration, logit_adjustment, risk_coverage
from core.decisions.ood import UNUSUAL_SCORES, OODDetector
from core.decisions.referral import SCORES as REFERRAL_SCORES, ReferralRule, melanoma_score
from core.decisions.uncertainty import LEVELS, UncertaintyLevels
from core.lesion.retrieval import CaseIndex
from calibration.evaluation_reports import labels_of, retrieval_scores
from train.stages import classification_scores

VIEW_CHOICES = (1, 4, 8)
TAUS = tuple(float(t) for t in np.round(np.arange(0, 1.51, 0.25), 2))
ADJUSTMENT_MIN_GAIN = 0.01      # keep a logit adjustment only if it raises the validation criterion this much ...
MAX_VALIDATION_ECE = 0.05       # ... and keeps the shown probabilities calibrated: validation ECE <= 0.05
SEG_TTA_MIN_GAIN = 0.002        # flip TTA of the segmenters only if it raises validation Dice by more than this
VIEWS_TIE = 0.002               # fewer views unless more views raise the criterion by more than this
LOW_MAX_ERROR = 0.08            # "low" uncertainty: the largest validation share whose top prediction errs <= 8 %
HIGH_SHARE = 0.30               # "high" uncertainty: the 30 % most uncertain validation images
OOD_PCA_DIMS = 64
OOD_UNUSUAL_QUANTILE = 0.90     # "unusual": the chosen distance above 90 % of validation images
OOD_IMAGENET_QUANTILE = 0.999   # "not dermoscopy": ImageNet distance above 99.9 % of validation images ...
OOD_CHROMA_FACTOR = 0.5         # ... or chroma below half the 0.1 % quantile of validation images
OOD_PROJECTION_DIMS = 512
OOD_REFERENCE_IMAGES = 3000
INDEX_DIMS = (32, 64, 128)      # PCA sizes tried for the similar-cases index


def criterion(probs: np.ndarray, labels: np.ndarray, sources: np.ndarray) -> float:
    """The model-selection criterion, as in training: the mean of HAM10000's balanced accuracy and the other
    source's macro AUC (each source alone when only one is present)."""
    parts = []
    for source in np.unique(sources):
        chosen = sources == source
        scores = classification_scores(labels[chosen], probs[chosen])
        parts.append(scores["balanced_accuracy"] if source == "ham10000" else scores["macro_auc"])
    return float(np.mean(parts))


def fit_temperature(logits_views: np.ndarray, labels: np.ndarray, offsets: np.ndarray) -> float:
    """The temperature minimising the validation NLL of the view-averaged probabilities."""
    z = torch.as_tensor(logits_views + offsets, dtype=torch.float64)
    y = torch.as_tensor(labels)

    def nll(log_t: float) -> float:
        p = torch.softmax(z / math.exp(log_t), -1).mean(0)
        return float(-torch.log(p[torch.arange(len(y)), y].clamp(min=1e-12)).mean())

    return float(math.exp(minimize_scalar(nll, bounds=(math.log(0.05), math.log(20)), method="bounded",
                                          options={"xatol": 1e-5}).x))


def choose_rule(table: list[dict]) -> dict:
    """The grid row (views, tau, temperature, criterion, ece) the decision rule uses. Per number of views: the row
    with the best criterion among those whose validation ECE <= MAX_VALIDATION_ECE, kept only if it beats no
    adjustment (tau 0) by >= ADJUSTMENT_MIN_GAIN; then more views only if they add > VIEWS_TIE."""
    chosen = {}
    for views in VIEW_CHOICES:
        rows = [r for r in table if r["views"] == views]
        plain = min(rows, key=lambda r: r["tau"])
        calibrated = [r for r in rows if r["ece"] <= MAX_VALIDATION_ECE] or [plain]
        best = max(calibrated, key=lambda r: r["criterion"])
        chosen[views] = best if best["criterion"] - plain["criterion"] >= ADJUSTMENT_MIN_GAIN else plain
    pick = chosen[VIEW_CHOICES[0]]
    for views in VIEW_CHOICES[1:]:
        if chosen[views]["criterion"] > pick["criterion"] + VIEWS_TIE:
            pick = chosen[views]
    return pick


def fit_decision_rule(logits_views: np.ndarray, labels: np.ndarray, sources: np.ndarray,
                      priors: np.ndarray) -> tuple[DecisionRule, dict]:
    """Views, logit adjustment and temperature chosen on validation (temperature by NLL, the rest by choose_rule)."""
    table = []
    for views in VIEW_CHOICES:
        for tau in TAUS:
            offsets = logit_adjustment(priors, tau)
            temperature = fit_temperature(logits_views[:views], labels, offsets)
            rule = DecisionRule(views, temperature, tuple(float(o) for o in offsets))
            probs = rule.probabilities(logits_views)
            table.append({"views": views, "tau": float(tau), "temperature": temperature,
                          "criterion": criterion(probs, labels, sources), "ece": calibration(probs, labels)["ece"],
                          "accuracy": float((probs.argmax(1) == labels).mean())})
    pick = choose_rule(table)
    rule = DecisionRule(pick["views"], pick["temperature"], tuple(float(o) for o in logit_adjustment(priors, pick["tau"])))
    report = {"grid": table, "chosen": pick, "rule": (
        f"views, logit adjustment tau (grid {list(TAUS)}) and temperature fitted on validation; the adjustment is kept "
        f"only if it raises the criterion by >= {ADJUSTMENT_MIN_GAIN} and the shown probabilities stay calibrated "
        f"(validation ECE <= {MAX_VALIDATION_ECE}); more views only if they raise the criterion by > {VIEWS_TIE}"),
        "criterion": "mean of HAM10000 val balanced accuracy and ISIC 2017 val-part macro AUC"}
    return rule, report


def fit_referral(probs: np.ndarray, labels: np.ndarray, sources: np.ndarray | None = None,
                 target_sensitivity: float = 0.9) -> tuple[ReferralRule, dict]:
    """For each candidate score, the largest threshold that keeps validation melanoma sensitivity >= target in
    *every* validation source (HAM10000 val and the ISIC 2017 part: the rule must hold for each clinic it has seen,
    not only on the pooled set that HAM10000 dominates); the score with the higher validation specificity there wins."""
    sources = np.full(len(labels), "all") if sources is None else np.asarray(sources)
    is_mel = labels == CLASS_INDEX["mel"]
    candidates = {}
    for kind in REFERRAL_SCORES:
        score = melanoma_score(probs, kind)
        per_source = {}
        for source in np.unique(sources[is_mel]):
            positives = np.sort(score[is_mel & (sources == source)])
            per_source[str(source)] = float(positives[int(math.floor((1 - target_sensitivity) * len(positives)))])
        threshold = min(per_source.values())
        candidates[kind] = {"threshold": threshold, "sensitivity": float((score[is_mel] >= threshold).mean()),
                            "specificity": float((score[~is_mel] < threshold).mean()),
                            "threshold_per_source": per_source,
                            "sensitivity_per_source": {s: float((score[is_mel & (sources == s)] >= threshold).mean())
                                                       for s in per_source}}
    kind = max(candidates, key=lambda k: candidates[k]["specificity"])
    return (ReferralRule(kind, candidates[kind]["threshold"], target_sensitivity),
            {"candidates": candidates, "chosen": kind, "validation_melanomas": int(is_mel.sum()),
             "validation_melanomas_per_source": {str(s): int((is_mel & (sources == s)).sum())
                                                 for s in np.unique(sources[is_mel])},
             "rule": f"largest threshold with validation melanoma sensitivity >= {target_sensitivity} in every "
                     "validation source; the score with the higher validation specificity there"})


def fit_uncertainty(scores: dict[str, np.ndarray], errors: np.ndarray) -> tuple[UncertaintyLevels, dict]:
    """The score with the smallest validation AURC, cut into low (largest share with error <= LOW_MAX_ERROR),
    high (the HIGH_SHARE most uncertain) and moderate (between)."""
    curves = {name: risk_coverage(s, errors) for name, s in scores.items()}
    name = min(curves, key=lambda n: curves[n]["aurc"])
    s = scores[name]
    order = np.argsort(s, kind="stable")
    running = np.cumsum(errors[order]) / np.arange(1, len(s) + 1)
    ok = np.flatnonzero(running <= LOW_MAX_ERROR)
    low_count = int(ok.max()) + 1 if len(ok) else 0
    low_cut = float(s[order][low_count]) if low_count < len(s) else float(s.max()) + 1e-9
    high_cut = max(float(np.quantile(s, 1 - HIGH_SHARE)), low_cut)
    levels = UncertaintyLevels(name, (low_cut, high_cut))
    assigned = levels.levels(s)
    rates = {lvl: float(errors[assigned == lvl].mean()) if (assigned == lvl).any() else None for lvl in LEVELS}
    shares = {lvl: float((assigned == lvl).mean()) for lvl in LEVELS}
    levels = UncertaintyLevels(name, (low_cut, high_cut), {k: v for k, v in rates.items() if v is not None})
    return levels, {"aurc": {n: c["aurc"] for n, c in curves.items()}, "chosen": name, "validation_error_rates": rates,
                    "validation_shares": shares, "rule": (
                        f"score with the smallest validation AURC; low = the largest validation share whose top "
                        f"prediction errs <= {LOW_MAX_ERROR:.0%}, high = the {HIGH_SHARE:.0%} most uncertain")}


def fit_ood(train_pooled: np.ndarray, train_labels: np.ndarray, train_imagenet: np.ndarray,
            seed: int = 0) -> dict[str, torch.Tensor]:
    """The OOD model of the training data: class means + shared Ledoit-Wolf precision of mask-CN's PCA'd pooled
    features, and a seeded random projection of the ImageNet features with OOD_REFERENCE_IMAGES projected
    reference images."""
    pca = PCA(n_components=min(OOD_PCA_DIMS, *train_pooled.shape), random_state=seed).fit(train_pooled)
    z = pca.transform(train_pooled)
    present = [c for c in range(NUM_CLASSES) if (train_labels == c).any()]
    class_means = np.stack([z[train_labels == c].mean(0) for c in present])
    centred = z - class_means[np.searchsorted(present, train_labels)]
    rng = np.random.default_rng(seed)
    projection = rng.normal(size=(train_imagenet.shape[1], OOD_PROJECTION_DIMS)) / np.sqrt(OOD_PROJECTION_DIMS)
    chosen = rng.permutation(len(train_imagenet))[:OOD_REFERENCE_IMAGES]
    return {"pca_mean": torch.tensor(pca.mean_, dtype=torch.float32),
            "pca_components": torch.tensor(pca.components_, dtype=torch.float32),
            "class_means": torch.tensor(class_means, dtype=torch.float32),
            "precision": torch.tensor(LedoitWolf().fit(centred).precision_, dtype=torch.float32),
            "imagenet_projection": torch.tensor(projection, dtype=torch.float16),
            "imagenet_reference": torch.tensor(train_imagenet[chosen].astype(np.float32) @ projection, dtype=torch.float16)}


def fit_ood_thresholds(detector_tensors: dict[str, torch.Tensor], val_scores_of, errors: np.ndarray) -> tuple[dict, str, dict]:
    """Thresholds from validation scores (`val_scores_of(detector)` -> dict of score arrays): chroma below half its
    0.1 % quantile, ImageNet distance above its OOD_IMAGENET_QUANTILE quantile (not dermoscopy); for unusual, the
    distance with the highest validation AUROC for wrong predictions, above its OOD_UNUSUAL_QUANTILE quantile."""
    probe = OODDetector(detector_tensors, {"chroma": 0, "imagenet_distance": 0, "unusual": 0}, "feature_distance")
    scores = val_scores_of(probe)
    aurocs = {name: binary_auc(errors, scores[name]) for name in UNUSUAL_SCORES if name in scores}
    unusual = max(aurocs, key=aurocs.get)
    thresholds = {"chroma": float(OOD_CHROMA_FACTOR * np.quantile(scores["chroma"], 0.001)),
                  "imagenet_distance": float(np.quantile(scores["imagenet_distance"], OOD_IMAGENET_QUANTILE)),
                  "unusual": float(np.quantile(scores[unusual], OOD_UNUSUAL_QUANTILE))}
    return thresholds, unusual, {"validation_error_auroc": aurocs}


def fit_case_index(outputs: dict, tables: dict) -> tuple[CaseIndex, dict]:
    """PCA size chosen on validation queries against a train-only index (precision@k of the diagnosis); the
    shipped index holds train + val."""
    y_train, y_val = labels_of(tables["train"]), labels_of(tables["val"])
    scores = {}
    for dims in INDEX_DIMS:
        index = CaseIndex.fit(outputs["train"]["pooled"], tables["train"], dims)
        scores[dims] = retrieval_scores(index, outputs["val"]["pooled"], y_val, y_train)["precision_at_k"]
    best = max(scores.values())
    dims = min(d for d in INDEX_DIMS if scores[d] >= best - 0.005)
    reference = pd.concat([tables["train"], tables["val"]], ignore_index=True)
    pooled = np.concatenate([outputs["train"]["pooled"], outputs["val"]["pooled"]])
    return CaseIndex.fit(pooled, reference, dims), {"dims": dims, "validation_precision_at_k_by_dims": scores}
