"""The figures measured on a test set: classification, melanoma referral, uncertainty levels, segmentation (with the
E-layer ablation controls), OOD rates, similar-cases retrieval and resolution consistency, the headline ones with
bootstrap 95 % confidence intervals that resample lesions (core.analysis.metrics.value_with_ci). Functions from
tables, network outputs and fitted rules to the dicts the model card holds (calibration.evaluate, calibration.out_of_source); nothing here fits or writes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.analysis.metrics import (balanced_accuracy, binary_auc, calibration, classification_metrics, macro_auc,
                                   risk_coverage, value_with_ci)
from core.data.classes import CLASS_CODES, CLASS_INDEX, NUM_CLASSES, class_index
from core.decisions.decision_rule import DecisionRule
from core.decisions.ood import OODDetector
from core.decisions.ood_levels import REFUSED_LEVELS
from core.decisions.uncertainty import LEVELS
from core.lesion.retrieval import CaseIndex
from train.network_outputs import image_outputs

TEST_SETS = {"ham10000_test": "HAM10000 test (lesion-grouped)", "isic2017_test": "ISIC 2017 official validation"}
CONTROLS = ("coarse_sn_more", "enhanced_sn_zero")
RETRIEVAL_K = 8
KNN_K = 10


# ---------------------------------------------------------------- small helpers
def labels_of(table: pd.DataFrame) -> np.ndarray:
    return np.array([class_index(d) for d in table["dx"]])


# ---------------------------------------------------------------- a test set's figures
def classification_report(table: pd.DataFrame, probs: np.ndarray, raw_probs: np.ndarray) -> dict:
    """Per-class metrics, calibration of exactly the shown probabilities (and of the plain softmax), and CIs of
    the headline figures (HAM10000: lesions resampled)."""
    y = labels_of(table)
    groups = table["lesion_id"].to_numpy()
    metrics = classification_metrics(y, probs, CLASS_CODES)
    metrics["calibration"] = {"before": calibration(raw_probs, y), "after": calibration(probs, y)}
    ci = {"balanced_accuracy": value_with_ci(lambda i: balanced_accuracy(y[i], probs[i].argmax(1)), len(y), groups),
          "macro_auc": value_with_ci(lambda i: macro_auc(y[i], probs[i]), len(y), groups)}
    for code in ("mel", "bkl", "nv"):
        k = CLASS_INDEX[code]
        if 0 < (y == k).sum() < len(y):
            ci[f"auc_{code}"] = value_with_ci(lambda i, k=k: binary_auc(y[i] == k, probs[i, k]), len(y), groups)
    metrics["ci"] = ci
    return metrics


def referral_report(table: pd.DataFrame, probs: np.ndarray, rule) -> dict:
    y = labels_of(table)
    groups = table["lesion_id"].to_numpy()
    is_mel = y == CLASS_INDEX["mel"]
    score = rule.score_of(probs)
    refer = score >= rule.threshold
    return {"n_melanoma": int(is_mel.sum()), "n_other": int((~is_mel).sum()), "referred_share": float(refer.mean()),
            "sensitivity": value_with_ci(lambda i: refer[i][is_mel[i]].mean() if is_mel[i].any() else None,
                                         len(y), groups),
            "specificity": value_with_ci(lambda i: (~refer[i][~is_mel[i]]).mean() if (~is_mel[i]).any() else None,
                                         len(y), groups),
            "auc": value_with_ci(lambda i: binary_auc(is_mel[i], score[i]), len(y), groups)}


def uncertainty_report(table: pd.DataFrame, probs: np.ndarray, score: np.ndarray, levels) -> dict:
    y = labels_of(table)
    groups = table["lesion_id"].to_numpy()
    errors = (probs.argmax(1) != y).astype(float)
    assigned = levels.levels(score)
    out = {"risk_coverage": risk_coverage(score, errors), "levels": {}}
    for level in LEVELS:
        chosen = assigned == level
        out["levels"][level] = {"share": float(chosen.mean()), "n": int(chosen.sum()),
                                "error_rate": value_with_ci(lambda i, c=chosen: errors[i][c[i]].mean() if c[i].any()
                                                      else None,
                                                      len(y), groups)}
    return out


def segmentation_report(table: pd.DataFrame, outputs: dict) -> dict:
    """Dice / Jaccard / thresholded Jaccard of every segmenter variant with CIs, and paired differences of the
    shipped enhanced-SN against its controls (a positive difference favours enhanced-SN)."""
    groups = table["lesion_id"].to_numpy()
    out = {}
    for key in sorted(k for k in outputs if k.startswith("seg_")):
        dice_, jac = outputs[key][:, 0].astype(float), outputs[key][:, 1].astype(float)
        thresholded = np.where(jac >= 0.65, jac, 0.0)
        out[key[4:]] = {"n": len(dice_), "dice_per_image": [round(float(d), 4) for d in dice_],
                        **{name: value_with_ci(lambda i, v=v: v[i].mean(), len(v), groups)
                           for name, v in (("dice", dice_), ("jaccard", jac),
                                           ("jaccard_thresholded_065", thresholded))}}
    shipped = outputs.get("seg_enhanced_sn")
    out["paired_differences"] = {}
    for other in ("coarse_sn", *CONTROLS):
        if shipped is not None and f"seg_{other}" in outputs:
            diff = shipped[:, 1].astype(float) - outputs[f"seg_{other}"][:, 1].astype(float)
            out["paired_differences"][f"enhanced_sn - {other} (Jaccard)"] = value_with_ci(lambda i: diff[i].mean(),
                                                                                    len(diff), groups)
    return out


def ood_scores(detector: OODDetector, data: dict, index: CaseIndex) -> dict[str, np.ndarray]:
    return detector.scores(data["pooled"].astype(np.float32), data["imagenet"].astype(np.float32), data["chroma"],
                           index.knn_distance(data["pooled"], KNN_K))


def ood_report(detector: OODDetector, outputs: dict, tables: dict, probs: dict, photos: dict, synthetic: dict,
               index: CaseIndex) -> dict:
    result = {"thresholds": detector.thresholds, "unusual_score": detector.unusual_score, "results": {}}
    for name in TEST_SETS:
        levels = detector.levels(ood_scores(detector, outputs[name], index))
        errors = probs[name].argmax(1) != labels_of(tables[name])
        unusual = levels == "unusual"
        result["results"][name] = {
            "not_dermoscopy_share": float(np.isin(levels, REFUSED_LEVELS).mean()),
            "unusual_share": float(unusual.mean()),
            "error_rate_unusual": float(errors[unusual].mean()) if unusual.any() else None,
            "error_rate_in": float(errors[levels == "in"].mean()) if (levels == "in").any() else None}
    for name, data in (("real_non_dermoscopy_photos", photos), ("synthetic_non_dermoscopic", synthetic)):
        levels = detector.levels(ood_scores(detector, data, index))
        result["results"][name] = {"n": len(levels),
                                   "not_dermoscopy_share": float(np.isin(levels, REFUSED_LEVELS).mean()),
                                   "accepted": [n for n, lvl in zip(data["names"], levels)
                                                if lvl not in REFUSED_LEVELS]}
    return result


def resolution_consistency(nets: dict, data_dir: Path, rule: DecisionRule, limit: int = 0) -> dict:
    """Share of the full-resolution HAM10000 originals whose top class differs from that of their 200x150 copy."""
    import cv2

    folder = Path(data_dir) / "ham10000" / "fullres" / "images"
    paths = sorted(folder.glob("*.jpg"))[: limit or None]
    if not paths:
        return {"n": 0}
    read = lambda p: np.ascontiguousarray(cv2.imread(str(p))[:, :, ::-1])  # noqa: E731
    full = rule.probabilities(image_outputs(nets, [read(p) for p in paths])["logits"])
    small = rule.probabilities(image_outputs(nets, [read(Path(data_dir) / "ham10000" / "images" / p.name)
                                                    for p in paths])["logits"])
    changed = full.argmax(1) != small.argmax(1)
    return {"n": len(paths), "top_class_changed_share": float(changed.mean()),
            "mean_abs_probability_change": float(np.abs(full - small).sum(1).mean() / 2)}


# ---------------------------------------------------------------- similar cases
def retrieval_scores(index: CaseIndex, pooled: np.ndarray, y_query: np.ndarray, y_index: np.ndarray) -> dict:
    sims = index.similarities(index.embed(pooled))
    top = torch.topk(sims, RETRIEVAL_K, dim=1)
    neighbour_labels = y_index[top.indices.numpy()]
    votes = np.zeros((len(y_query), NUM_CLASSES))
    for j in range(RETRIEVAL_K):
        np.add.at(votes, (np.arange(len(y_query)), neighbour_labels[:, j]), top.values[:, j].numpy())
    return {"precision_at_k": float((neighbour_labels == y_query[:, None]).mean()),
            "knn_vote_balanced_accuracy": float(balanced_accuracy(y_query, votes.argmax(1))), "k": RETRIEVAL_K}
