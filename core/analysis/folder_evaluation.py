"""Evaluate the shipped model on a researcher's own labelled images (any layout core.data.datasets reads).

Every image goes through core.io.intake and Analyzer.analyze exactly as in the app; one bad file becomes a failure row
and the run goes on; `should_stop` is polled between images (a cancelled run reports what it has). The report:
per-class table, balanced accuracy and macro AUC with bootstrap 95 % CIs (images of one lesion resampled together),
confusion matrix, ROC curves, reliability diagram, the melanoma referral's sensitivity / specificity, Dice / Jaccard
where masks exist, the images given no automated assessment (counted and listed), and one prediction row per image. Used by the "Evaluate your data" page and by
`python -m calibration.evaluate --data-dir DIR --report OUT/`, so both give the same numbers.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import pandas as pd

from core.data.classes import CLASS_CODES, CLASS_INDEX, class_index
from core.io.intake import ImageRejected, load_image_file
from core.analysis.metrics import (balanced_accuracy, calibration, classification_metrics, dice, jaccard, macro_auc,
                                   value_with_ci)
from core.decisions.ood_levels import REFUSED_LEVELS


@dataclass
class FolderEvaluation:
    predictions: pd.DataFrame                 # one row per image: image_id, dx, pred, p_*, mel_score, refer, levels, dice
    failures: list[tuple[str, str]] = field(default_factory=list)   # (image_id, message)
    cancelled: bool = False
    summary: dict = field(default_factory=dict)  # the report (JSON-ready)


def refused_images(predictions: pd.DataFrame) -> list[dict]:
    """The images given no automated assessment (not dermoscopy), each with its true label and the reason: they are
    out of the figures, so the report lists them (a refused image is not a benign one)."""
    refused = predictions[predictions["ood_level"].isin(REFUSED_LEVELS)]
    return [{"image_id": row.image_id, "dx": row.dx, "ood_level": row.ood_level,
             "reason": row.ood_reason if isinstance(row.ood_reason, str) else ""}
            for row in refused.itertuples(index=False)]


def summarise(predictions: pd.DataFrame) -> dict:
    """The report figures from prediction rows. ``n_images`` counts the images evaluated (given a diagnosis, so in
    the figures); rows without one (not dermoscopy: no automated assessment) are counted and listed apart, with the
    melanomas among them: counting them as evaluated claimed figures for images the figures leave out."""
    diagnosed = predictions[predictions["pred"] != ""]
    refused = refused_images(predictions)
    out = {"n_images": int(len(diagnosed)), "n_not_dermoscopy": len(refused), "refused": refused,
           "n_melanoma_refused": sum(r["dx"] == "mel" for r in refused)}
    if diagnosed.empty:
        return out
    y = np.array([class_index(d) for d in diagnosed["dx"]])
    probs = diagnosed[[f"p_{c}" for c in CLASS_CODES]].to_numpy(dtype=float)
    groups = diagnosed["lesion_id"].to_numpy()
    metrics = classification_metrics(y, probs, CLASS_CODES)
    metrics["calibration"] = calibration(probs, y)
    metrics["ci"] = {"balanced_accuracy": value_with_ci(lambda i: balanced_accuracy(y[i], probs[i].argmax(1)), len(y),
                                                        groups),
                     "macro_auc": value_with_ci(lambda i: macro_auc(y[i], probs[i]), len(y), groups)}
    is_mel = y == CLASS_INDEX["mel"]
    refer = (diagnosed["refer"] == "yes").to_numpy()
    out["classification"] = metrics
    out["referral"] = {"n_melanoma": int(is_mel.sum()),
                       "sensitivity": float(refer[is_mel].mean()) if is_mel.any() else None,
                       "specificity": float((~refer[~is_mel]).mean()) if (~is_mel).any() else None}
    with_masks = predictions[predictions["dice"].notna()]
    if len(with_masks):
        d, j = with_masks["dice"].to_numpy(float), with_masks["jaccard"].to_numpy(float)
        g = with_masks["lesion_id"].to_numpy()
        out["segmentation"] = {"n": int(len(d)), "dice": value_with_ci(lambda i: d[i].mean(), len(d), g),
                               "jaccard": value_with_ci(lambda i: j[i].mean(), len(j), g)}
    return out


PREDICTION_COLUMNS = ["image_id", "lesion_id", "dx", "pred", *[f"p_{c}" for c in CLASS_CODES], "mel_score", "refer",
                      "triage", "uncertainty_level", "ood_level", "ood_reason", "dice", "jaccard"]


def evaluate_folder(analyzer, manifest: pd.DataFrame, on_progress: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> FolderEvaluation:
    """Analyse every manifest row (core.data.datasets.load_manifest of the folder) and summarise."""
    return assemble(*predict_rows(analyzer, manifest, on_progress, should_stop), analyzer.card.model_version)


def predict_rows(analyzer, manifest: pd.DataFrame, on_progress: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> tuple[list[dict], list[tuple[str, str]], bool]:
    """(prediction rows, failures, cancelled) of the manifest's images; the dashboard calls it a chunk at a time.
    on_progress(done, total) follows every image, failed ones included."""
    rows, failures = [], []
    for n, record in enumerate(manifest.itertuples(index=False), start=1):
        if should_stop is not None and should_stop():
            return rows, failures, True
        try:
            rows.append(_prediction_row(analyzer, record))
        except ImageRejected as exc:
            failures.append((record.image_id, str(exc)))
        except Exception as exc:  # one bad file never stops the run
            failures.append((record.image_id, f"analysis failed: {exc}"))
        if on_progress is not None:
            on_progress(n, len(manifest))
    return rows, failures, False


def _prediction_row(analyzer, record) -> dict:
    result = analyzer.analyze(load_image_file(record.image_path))
    row = {"image_id": record.image_id, "lesion_id": record.lesion_id or record.image_id, "dx": record.dx,
           "pred": result.label if result.diagnosis_shown else "",
           **{f"p_{c}": result.probs[c] if result.diagnosis_shown else np.nan for c in CLASS_CODES},
           "mel_score": result.mel_score, "refer": ("yes" if result.refer else "no") if result.diagnosis_shown else "",
           "triage": result.triage.level if result.triage is not None else "",
           "uncertainty_level": result.uncertainty_level, "ood_level": result.ood_level, "ood_reason": result.ood_reason,
           "dice": np.nan, "jaccard": np.nan}
    if record.mask_path:
        truth = cv2.imread(record.mask_path, cv2.IMREAD_GRAYSCALE)
        if truth is not None:
            if truth.shape != result.mask.shape:
                truth = cv2.resize(truth, (result.mask.shape[1], result.mask.shape[0]), interpolation=cv2.INTER_NEAREST)
            row["dice"], row["jaccard"] = dice(result.mask, truth), jaccard(result.mask, truth)
    return row


def assemble(rows: list[dict], failures: list[tuple[str, str]], cancelled: bool, model_version: str) -> FolderEvaluation:
    """The evaluation of prediction rows (all of a folder's, or those done before a cancel) with its summary."""
    predictions = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    summary = {**summarise(predictions), "n_failed": len(failures), "cancelled": cancelled,
               "model_version": model_version}
    return FolderEvaluation(predictions, list(failures), cancelled, summary)
