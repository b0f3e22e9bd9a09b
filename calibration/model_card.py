"""What calibration.evaluate writes to WEIGHTS: the fp16 copies of the shipped networks, test_predictions.csv (one row
per test image) and the model card (model_card.json: rules, figures, files, training curves), and its printed summary.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import load_file

from core.io.weights_io import NETWORK_FILES
from core.data.classes import CLASS_CODES, CLASSES
from core.data.dataset_summary import dataset_summary
from core.decisions.referral import SCORES as REFERRAL_SCORES
from core.imaging.preprocess import IMAGENET_MEAN, IMAGENET_STD
from core.io.weights_io import save_weights
from calibration.card_io import Split
from calibration.evaluation_reports import KNN_K, RETRIEVAL_K, TEST_SETS, ood_scores


def export_weights(runs: Path, weights: Path) -> dict:
    """fp16 copies of the three shipped networks (metadata kept); returns {file: {sha256, bytes}}."""
    from core.io.weights_io import weights_metadata

    files = {}
    weights.mkdir(parents=True, exist_ok=True)
    for arch, file_name in NETWORK_FILES.items():
        source = runs / arch / "best.safetensors"
        files[file_name] = save_weights(load_file(str(source)), weights / file_name, half=True,
                                        metadata=weights_metadata(source))
    return files


def prediction_rows(tables, probs, referral, levels, scores, detector, outputs, index, baseline_rule,
                    with_context) -> pd.DataFrame:
    """One row per test image (both test sets): what the app would show without patient context, plus per-image
    Dice, the image-only classifier's and (mask_cn_context_*) what the app shows with the dataset's patient context."""
    parts = []
    for name in TEST_SETS:
        table, p = tables[name], probs[name]
        rows = table[["image_id", "source", "dx", "lesion_id"]].copy()
        rows["pred"] = [CLASS_CODES[i] for i in p.argmax(1)]
        for j, code in enumerate(CLASS_CODES):
            rows[f"p_{code}"] = p[:, j].round(5)
        rows["mel_score"] = referral.score_of(p).round(5)
        rows["refer"] = np.where(referral.refer(p), "yes", "no")
        rows["uncertainty_score"] = scores[name].round(5)
        rows["uncertainty_level"] = levels.levels(scores[name])
        rows["ood_level"] = detector.levels(ood_scores(detector, outputs[name], index))
        for key, column in (("seg_coarse_sn", "dice_coarse"), ("seg_enhanced_sn", "dice_enhanced")):
            if key in outputs[name]:
                rows[column] = outputs[name][key][:, 0].round(4)
        if baseline_rule is not None:
            q = baseline_rule.probabilities(outputs[name]["baseline_logits"])
            rows["classifier_pred"] = [CLASS_CODES[i] for i in q.argmax(1)]
            for j, code in enumerate(CLASS_CODES):
                rows[f"classifier_p_{code}"] = q[:, j].round(5)
        q = with_context[name]
        rows["mask_cn_context_pred"] = [CLASS_CODES[i] for i in q.argmax(1)]
        for j, code in enumerate(CLASS_CODES):
            rows[f"mask_cn_context_p_{code}"] = q[:, j].round(5)
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)


TRAINING_DATA = {"ham10000": "HAM10000 train", "isic2017": "ISIC 2017 train (85 %)",
                 "acral": "ISIC Archive acral train (70 % by group_id; no drawn masks: coarse-SN's mask stands in)"}


def classification_data(runs: Path) -> str:
    """What mask-CN was trained on, read from its run's own config (the last run's: a fine-tune names its data)."""
    config = json.loads((runs / "mask_cn" / "history.json").read_text())["config"]
    sources = [s for s in str(config.get("sources") or "ham10000,isic2017").split(",") if s]
    text = " + ".join(TRAINING_DATA.get(s, s) for s in sources)
    if config.get("leave_out"):
        text += f", without {config['leave_out']}"
    return text + ", CC BY-NC 4.0"


def training_curves(runs: Path) -> dict:
    curves = {}
    for path in sorted(runs.glob("*/history.json")):
        curves[path.parent.name] = json.loads(path.read_text())["history"]
    return curves


def training_minutes(curves: dict) -> dict:
    return {stage: {"epochs": len(history), "minutes": round(sum(e["seconds"] for e in history) / 60, 1),
                    "best_val_score": max(e["val_metric"] for e in history)}
            for stage, history in curves.items() if history}


def ablation_rows(metrics: dict) -> list[dict]:
    """Every test figure with its CI, one row per (test set, model, metric): the card's `ablation` table."""
    ablation = []
    for name, title in TEST_SETS.items():
        for model, entry in metrics[name]["classification"].items():
            for metric, ci in entry["ci"].items():
                ablation.append({"data": title, "model": model, "metric": metric, **ci})
        for model, entry in metrics[name]["segmentation"].items():
            if model != "paired_differences":
                for metric in ("dice", "jaccard", "jaccard_thresholded_065"):
                    ablation.append({"data": title, "model": model, "metric": metric, **entry[metric]})
    return ablation


def preprocessing_entry(mask_cn, coarse) -> dict:
    return {**mask_cn.preprocessing.to_card(),
            "jpeg_quality": {"classifier": mask_cn.preprocessing.jpeg_quality,
                             "segmenter": coarse.preprocessing.jpeg_quality},
            "resize": "crop to the field of view, then INTER_AREA to the network input size",
            "normalisation": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
            "mask_channel": "coarse-SN probability, (p - 0.5) / 0.25"}


def split_entry(split: Split) -> dict:
    return {"method": (f"the split file {split.file}" if split.file else
                       "HAM10000 grouped by lesion_id, stratified by dx (StratifiedGroupKFold's algorithm, 20 "
                       f"folds: 3 test, 3 val, 14 train), seed {split.seed}; ISIC 2017: official validation = "
                       "test, stratified 15 % of official train = val"), "seed": split.seed, "file": split.file}


def headline_figures(metrics: dict) -> dict:
    """The figures README's headline table and the Home page quote."""
    ham, isic = metrics["ham10000_test"], metrics["isic2017_test"]
    return {"ham10000_balanced_accuracy": ham["classification"]["mask_cn"]["ci"]["balanced_accuracy"],
            "ham10000_macro_auc": ham["classification"]["mask_cn"]["ci"]["macro_auc"],
            "ham10000_melanoma_auc": ham["classification"]["mask_cn"]["ci"].get("auc_mel"),
            "isic2017_melanoma_auc": isic["classification"]["mask_cn"]["ci"].get("auc_mel"),
            "isic2017_seborrhoeic_keratosis_auc": isic["classification"]["mask_cn"]["ci"].get("auc_bkl"),
            "ham10000_enhanced_sn_dice": ham["segmentation"].get("enhanced_sn", {}).get("dice"),
            "isic2017_enhanced_sn_jaccard": isic["segmentation"].get("enhanced_sn", {}).get("jaccard")}


def build_card(version: str, split: Split, manifest, files, nets, rule, rule_fit, referral, referral_fit, levels,
               uncertainty_fit, ood, index_fit, metrics, resolution, runs: Path, started: float) -> dict:
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    mask_cn, coarse = nets["mask_cn"], nets["coarse_sn"]
    curves = training_curves(runs)
    return {
        "name": "LesionLens MB-DCNN",
        "version": version or f"mbdcnn-{mask_cn.meta.get('backbone', 'lite0')}-{created[:10]}",
        "created": created,
        "architecture": "Mutual Bootstrapping DCNN (Xie et al., IEEE TMI 2020): coarse-SN (U-Net) -> mask-CN "
                        "(4-channel classifier) -> CAM localisation map -> enhanced-SN (U-Net + E-layers)",
        "backbones": {name: nets[name].meta["backbone"] for name in NETWORK_FILES},
        "class_names": list(CLASS_CODES),
        "classes": [{"code": c.code, "name": c.name, "malignant": c.malignant, "color": c.color} for c in CLASSES],
        "preprocessing": preprocessing_entry(mask_cn, coarse),
        "input_size": {"classifier": dict(zip(("height", "width"), mask_cn.size)),
                       "segmenter": dict(zip(("height", "width"), coarse.size))},
        "data": {"classification": classification_data(runs),
                 "segmentation": "HAM10000 masks (Tschandl et al. 2020) + ISIC 2017 train masks",
                 "validation": "HAM10000 val + 15 % of ISIC 2017 train (every choice)",
                 "test": "HAM10000 lesion-grouped test split; ISIC 2017 official validation set (other clinics)"},
        "split": split_entry(split),
        "dataset_summary": dataset_summary(manifest),
        "files": files,
        "decision_rule": {**rule.to_card(), "fit": rule_fit},
        "referral": {**referral.to_card(), "score_meaning": REFERRAL_SCORES[referral.score], "fit": referral_fit},
        "uncertainty": {**levels.to_card(), "fit": uncertainty_fit},
        "ood": ood,
        "retrieval": {"k": RETRIEVAL_K, "knn_k": KNN_K, "reference_set": "train + val (HAM10000, ISIC 2017)",
                      **index_fit},
        "metrics": metrics,
        "ablation": ablation_rows(metrics),
        "resolution_consistency": resolution,
        "training_curves": curves,
        "training_time_minutes": training_minutes(curves),
        "evaluation_seconds": round(time.time() - started, 1),
        "predictions_csv": "test_predictions.csv",
        "headline": headline_figures(metrics),
    }


def print_summary(card: dict) -> None:
    print(f"model card {card['version']}  (evaluation {card['evaluation_seconds']} s)")
    for key, value in card["headline"].items():
        if value:
            print(f"  {key:<38} {value['value']:.4f}  [{value['ci95'][0]:.4f}, {value['ci95'][1]:.4f}]")
    print("  decision rule", json.dumps({k: v for k, v in card["decision_rule"].items() if k != "fit"}))
    print("  referral", card["referral"]["score"], round(card["referral"]["threshold"], 4))
    print("  uncertainty", card["uncertainty"]["score"], card["uncertainty"]["cuts"])
    for name, entry in card["ood"]["results"].items():
        print(f"  OOD {name}: " + json.dumps({k: v for k, v in entry.items() if k != "accepted"}))
    for name, entry in card["files"].items():
        print(f"  {name:<28} {entry['bytes'] / 2**20:6.2f} MiB  sha256 {entry['sha256'][:16]}")
