"""Export the trained networks to weights/ and write the model card, evaluated on held-out data.

    python -m train.evaluate --data-dir ../shared/data --runs runs --weights weights

1. fp16 safetensors of coarse-SN, mask-CN, enhanced-SN (from RUNS/<stage>/best.safetensors) into WEIGHTS;
   every number below is computed with those fp16 files, i.e. what the app ships.
2. Temperature (per classifier) and the OOD detector + threshold are fitted on the VALIDATION split only.
3. Test metrics on the lesion-grouped HAM10000 test split; segmentation also on ISIC 2017 val.
4. WEIGHTS/model_card.json and WEIGHTS/test_predictions.csv (per-image, for the dashboard drill-down).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA

from core.classes import CLASS_CODES, CLASSES, class_index
from core.datasets import load_manifest
from core.splits import apply_split_file, assign_splits
from core.dataset_summary import dataset_summary
from core.inference import NETWORK_FILES, OOD_FILE
from core.ood import IMAGE_STAT_NAMES, OODDetector, image_statistics
from core.metrics import (calibration, classification_metrics, fit_logit_adjustment, fit_temperature, logit_adjustment,
                          segmentation_metrics)
from core.models import create_model
from core.mbdcnn import classify_with_localisation, coarse_probabilities, mask_cn_input
from core.tensors import CLASSIFIER_SIZE, IMAGENET_MEAN, IMAGENET_STD, SEGMENTER_SIZE, normalize_batch
from core.weights_io import MODEL_CARD_NAME, save_weights
from core.preprocess import Preprocessing
from train.cache import load_arrays

OOD_PCA_DIMS = 64
OOD_VAL_QUANTILE = 0.99
OOD_IMAGE_VAL_QUANTILE = 0.995


# ---------------------------------------------------------------- export + load
def export_weights(runs: Path, weights: Path) -> dict:
    files = {}
    for arch, file_name in NETWORK_FILES.items():
        state = load_file(str(runs / arch / "best.safetensors"))
        files[file_name] = save_weights(state, weights / file_name, half=True)
    return files


def load_network(arch: str, path: Path, backbone: str) -> torch.nn.Module:
    model = create_model(arch, backbone, pretrained=None)
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval().to(memory_format=torch.channels_last)


# ---------------------------------------------------------------- running the networks on a split
@torch.no_grad()
def run_mbdcnn(nets: dict, table: pd.DataFrame, baseline=None) -> dict:
    """Batched MB-DCNN outputs for a manifest slice (cached arrays, no TTA: exactly what the Analyzer does)."""
    seg_images, _ = load_arrays(table, SEGMENTER_SIZE, Preprocessing(False, False), False)
    cls_images, _ = load_arrays(table, CLASSIFIER_SIZE, Preprocessing(False, False), False)
    out = {"coarse": [], "enhanced": [], "logits": [], "pooled": [], "baseline_logits": []}
    for start in range(0, len(table), 64):
        seg_x = normalize_batch(torch.from_numpy(seg_images[start:start + 64]))
        cls_x = normalize_batch(torch.from_numpy(cls_images[start:start + 64]))
        coarse = coarse_probabilities(nets["coarse_sn"], seg_x)
        x4 = mask_cn_input(cls_x, coarse)
        logits, loc = classify_with_localisation(nets["mask_cn"], x4)
        features = nets["mask_cn"].net.forward_features(x4)
        out["pooled"].append(nets["mask_cn"].net.forward_head(features, pre_logits=True))
        out["coarse"].append(coarse)
        out["enhanced"].append(torch.sigmoid(nets["enhanced_sn"](seg_x, loc)))
        out["logits"].append(logits)
        if baseline is not None:
            out["baseline_logits"].append(baseline(cls_x))
    return {k: torch.cat(v).float() for k, v in out.items() if v}


def masks_at_reference_size(probs: torch.Tensor, table: pd.DataFrame) -> tuple[list, list]:
    """Upsample predicted probabilities to each reference mask's own size, threshold 0.5."""
    preds, refs = [], []
    for p, path in zip(probs, table["mask_path"]):
        ref = cv2.imread(path, cv2.IMREAD_GRAYSCALE) > 127
        up = cv2.resize(p[0].numpy(), (ref.shape[1], ref.shape[0]), interpolation=cv2.INTER_LINEAR)
        preds.append(up > 0.5)
        refs.append(ref)
    return preds, refs


# ---------------------------------------------------------------- calibration + OOD
def calibrated_metrics(val_logits, val_y, test_logits, test_y, priors) -> tuple[dict, dict, np.ndarray]:
    """Decision rule fitted on validation only: logit adjustment tau (max balanced accuracy), then temperature T
    on the adjusted logits. Test metrics use calibrated probabilities softmax((z + b(tau)) / T)."""
    tau, val_balanced = fit_logit_adjustment(val_logits.numpy(), val_y, priors)
    offsets = torch.tensor(logit_adjustment(priors, tau), dtype=torch.float32)
    temperature = fit_temperature((val_logits + offsets).numpy(), val_y)
    raw = F.softmax(test_logits + offsets, 1).numpy()
    calibrated = F.softmax((test_logits + offsets) / temperature, 1).numpy()
    metrics = classification_metrics(test_y, calibrated, CLASS_CODES)
    metrics["calibration"] = {"before": calibration(raw, test_y), "after": calibration(calibrated, test_y)}
    plain = F.softmax(test_logits / fit_temperature(val_logits.numpy(), val_y), 1).numpy()
    unadjusted = classification_metrics(test_y, plain, CLASS_CODES)
    metrics["without_logit_adjustment"] = {k: unadjusted[k] for k in ("accuracy", "balanced_accuracy", "macro_auc")}
    rule = {"temperature": temperature, "logit_adjustment_tau": tau, "logit_offsets": offsets.tolist(),
            "val_balanced_accuracy": val_balanced}
    metrics["decision_rule"] = rule
    return metrics, rule, calibrated


def fit_ood(train_pooled: torch.Tensor, train_y: np.ndarray, train_stats: np.ndarray) -> dict:
    pca = PCA(n_components=min(OOD_PCA_DIMS, len(train_pooled) - 1), random_state=0).fit(train_pooled.numpy())
    z = pca.transform(train_pooled.numpy())
    class_means = np.stack([z[train_y == c].mean(0) for c in range(len(CLASS_CODES))])
    centred = z - class_means[train_y]
    return {"pca_mean": torch.tensor(pca.mean_, dtype=torch.float32),
            "pca_components": torch.tensor(pca.components_, dtype=torch.float32),
            "class_means": torch.tensor(class_means, dtype=torch.float32),
            "precision": torch.tensor(LedoitWolf().fit(centred).precision_, dtype=torch.float32),
            "image_mean": torch.tensor(train_stats.mean(0), dtype=torch.float32),
            "image_precision": torch.tensor(LedoitWolf().fit(train_stats).precision_, dtype=torch.float32)}


def split_statistics(table: pd.DataFrame) -> np.ndarray:
    images, _ = load_arrays(table, CLASSIFIER_SIZE, Preprocessing(False, False), False)
    return np.stack([image_statistics(image) for image in images])


def synthetic_non_dermoscopic(n: int = 32, seed: int = 0) -> np.ndarray:
    """Images no dermatoscope produces (noise, flat colours, stripes, text-like blocks) to check the OOD flag."""
    rng = np.random.default_rng(seed)
    h, w = CLASSIFIER_SIZE
    images = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            img = rng.integers(0, 256, (h, w, 3))
        elif kind == 1:
            img = np.broadcast_to(rng.integers(0, 256, 3), (h, w, 3))
        elif kind == 2:
            img = np.where((np.arange(w)[None, :, None] // rng.integers(4, 20)) % 2 == 0, 255, rng.integers(0, 120, 3))
            img = np.broadcast_to(img, (h, w, 3))
        else:
            img = np.full((h, w, 3), 255)
            for _ in range(30):
                y, x = rng.integers(0, h - 10), rng.integers(0, w - 30)
                img[y:y + 6, x:x + rng.integers(5, 30)] = 0
        images.append(np.ascontiguousarray(img, dtype=np.uint8))
    return np.stack(images)


# ---------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--weights", default="weights")
    parser.add_argument("--split-file", default="")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--version", default="")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-images", type=int, default=0, help=">0: evaluate a random subset per split (smoke runs, tests)")
    args = parser.parse_args(argv)
    runs, weights = Path(args.runs), Path(args.weights)
    started = time.time()

    manifest = load_manifest(args.data_dir)
    manifest = apply_split_file(manifest, args.split_file) if args.split_file else assign_splits(manifest, args.seed)
    ham = manifest[manifest["source"] == "ham10000"]
    parts = {s: ham[ham["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
    isic_val = manifest[(manifest["source"] == "isic2017") & (manifest["split"] == "val")].reset_index(drop=True)
    if args.max_images:
        parts = {s: t.sample(n=min(args.max_images, len(t)), random_state=0).reset_index(drop=True) for s, t in parts.items()}
        isic_val = isic_val.head(args.max_images)
    labels = {s: np.array([class_index(d) for d in t["dx"]]) for s, t in parts.items()}

    files = export_weights(runs, weights)
    nets = {arch: load_network(arch, weights / f, args.backbone) for arch, f in NETWORK_FILES.items()}
    baseline_path = runs / "classifier" / "best.safetensors"
    baseline = load_network("classifier", baseline_path, args.backbone) if baseline_path.is_file() else None

    outputs = {s: run_mbdcnn(nets, t, baseline if s != "train" else None) for s, t in parts.items()}
    isic_out = run_mbdcnn(nets, isic_val) if len(isic_val) else None

    # Classification: temperature on val, metrics on test.
    priors = np.bincount(labels["train"], minlength=len(CLASS_CODES)) / len(labels["train"])
    cls_metrics, rule, test_probs = calibrated_metrics(outputs["val"]["logits"], labels["val"],
                                                       outputs["test"]["logits"], labels["test"], priors)
    classification = {"mask_cn": cls_metrics}
    if baseline is not None:
        classification["classifier"], _, _ = calibrated_metrics(outputs["val"]["baseline_logits"], labels["val"],
                                                                outputs["test"]["baseline_logits"], labels["test"], priors)

    # Segmentation at each reference mask's native size.
    segmentation, isic_segmentation, per_image = {}, {}, {}
    for name, key in (("coarse_sn", "coarse"), ("enhanced_sn", "enhanced")):
        preds, refs = masks_at_reference_size(outputs["test"][key], parts["test"])
        segmentation[name] = segmentation_metrics(preds, refs)
        per_image[name] = segmentation[name]["dice_per_image"]
        if isic_out is not None:
            preds, refs = masks_at_reference_size(isic_out[key], isic_val)
            isic_segmentation[name] = segmentation_metrics(preds, refs)

    # OOD: fitted on train, thresholds = high quantiles of the validation scores.
    stats = {name: split_statistics(table) for name, table in {**parts, "isic2017_val": isic_val}.items() if len(table)}
    ood_tensors = fit_ood(outputs["train"]["pooled"], labels["train"], stats["train"])
    files[OOD_FILE] = save_weights(ood_tensors, weights / OOD_FILE, half=False)
    probe = OODDetector(ood_tensors, 0.0, 0.0)
    threshold = float(np.quantile(probe.score(outputs["val"]["pooled"]).numpy(), OOD_VAL_QUANTILE))
    image_threshold = float(np.quantile(probe.image_score(stats["val"]).numpy(), OOD_IMAGE_VAL_QUANTILE))
    detector = OODDetector(ood_tensors, threshold, image_threshold)
    synthetic = synthetic_non_dermoscopic()
    with torch.no_grad():
        syn_x = normalize_batch(torch.from_numpy(synthetic))
        syn_seg = normalize_batch(torch.from_numpy(np.stack([cv2.resize(i, SEGMENTER_SIZE[::-1]) for i in synthetic])))
        syn_x4 = mask_cn_input(syn_x, coarse_probabilities(nets["coarse_sn"], syn_seg))
        syn_pooled = nets["mask_cn"].net.forward_head(nets["mask_cn"].net.forward_features(syn_x4), pre_logits=True)
    syn_stats = np.stack([image_statistics(image) for image in synthetic])
    ood_report = {
        "method": f"flagged when either distance exceeds its threshold: (1) min class-conditional Mahalanobis distance "
                  f"(shared Ledoit-Wolf covariance) of mask-CN pooled features in a {OOD_PCA_DIMS}-d PCA space fitted on "
                  f"HAM10000 train; (2) Mahalanobis distance of colour/texture image statistics "
                  f"({', '.join(IMAGE_STAT_NAMES)}) fitted on HAM10000 train",
        "threshold": threshold,
        "image_threshold": image_threshold,
        "threshold_rule": f"feature distance: {OOD_VAL_QUANTILE:.1%} quantile of HAM10000 validation scores; image "
                          f"statistics: {OOD_IMAGE_VAL_QUANTILE:.1%} quantile",
        "flagged_fraction": {
            "ham10000_val": float(detector.flags(outputs["val"]["pooled"], stats["val"]).mean()),
            "ham10000_test": float(detector.flags(outputs["test"]["pooled"], stats["test"]).mean()),
            "isic2017_val": float(detector.flags(isic_out["pooled"], stats["isic2017_val"]).mean()) if isic_out else None,
            "synthetic_non_dermoscopic": float(detector.flags(syn_pooled, syn_stats).mean()),
        },
    }

    predictions = parts["test"][["image_id", "source", "dx"]].copy()
    predictions["pred"] = [CLASS_CODES[i] for i in test_probs.argmax(1)]
    for j, code in enumerate(CLASS_CODES):
        predictions[f"p_{code}"] = test_probs[:, j].round(5)
    predictions["dice_coarse"] = per_image["coarse_sn"]
    predictions["dice_enhanced"] = per_image["enhanced_sn"]
    predictions.to_csv(weights / "test_predictions.csv", index=False)

    card = build_card(args, files, rule, classification, segmentation, isic_segmentation, ood_report,
                      manifest, runs, started)
    (weights / MODEL_CARD_NAME).write_text(json.dumps(card, indent=1))
    print_summary(card)
    return card


def training_curves(runs: Path) -> dict:
    curves = {}
    for stage in ("coarse_sn", "mask_cn", "enhanced_sn", "classifier"):
        path = runs / stage / "history.json"
        if path.is_file():
            curves[stage] = json.loads(path.read_text())["history"]
    return curves


def training_minutes(runs: Path) -> dict:
    """Wall-clock training minutes and epochs per stage, summed from each stage's history (resumed runs included)."""
    return {stage: {"epochs": len(history), "minutes": round(sum(e["seconds"] for e in history) / 60, 1),
                    "best_val_metric": max(e["val_metric"] for e in history)}
            for stage, history in training_curves(runs).items() if history}


def build_card(args, files, rule, classification, segmentation, isic_segmentation, ood_report, manifest,
               runs: Path, started: float) -> dict:
    mask_cn = classification["mask_cn"]
    ablation = []
    for model, key in (("image-only classifier", "classifier"), ("mask-CN (image + coarse mask)", "mask_cn")):
        if key in classification:
            for metric in ("balanced_accuracy", "macro_auc", "accuracy"):
                ablation.append({"comparison": "classification (HAM10000 test)", "model": model, "metric": metric,
                                 "value": classification[key][metric]})
    for model, key in (("coarse-SN", "coarse_sn"), ("enhanced-SN", "enhanced_sn")):
        for dataset, seg in (("HAM10000 test", segmentation), ("ISIC 2017 val", isic_segmentation)):
            if key in seg:
                for metric in ("dice_mean", "jaccard_mean", "jaccard_thresholded_065"):
                    ablation.append({"comparison": f"segmentation ({dataset})", "model": model, "metric": metric,
                                     "value": seg[key][metric]})
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    return {
        "name": "LesionLens MB-DCNN",
        "version": args.version or f"mbdcnn-lite0-{created[:10]}",
        "created": created,
        "architecture": "Mutual Bootstrapping DCNN (Xie et al., IEEE TMI 2020): coarse-SN (U-Net) -> mask-CN "
                        "(4-channel classifier) -> CAM localisation map -> enhanced-SN (U-Net + E-layers)",
        "backbone": args.backbone,
        "class_names": list(CLASS_CODES),
        "classes": [{"code": c.code, "name": c.name, "malignant": c.malignant, "color": c.color} for c in CLASSES],
        "preprocessing": {"normalisation": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}, "colour_constancy": None,
                          "hair_removal": None, "resize": "INTER_AREA to the network input size, any aspect ratio squashed",
                          "mask_channel": "coarse-SN probability, (p - 0.5) / 0.25"},
        "input_size": {"classifier": {"height": CLASSIFIER_SIZE[0], "width": CLASSIFIER_SIZE[1]},
                       "segmenter": {"height": SEGMENTER_SIZE[0], "width": SEGMENTER_SIZE[1]}},
        "data": {"classification": "HAM10000 (10,015 images, 7 classes), CC BY-NC 4.0",
                 "segmentation": "HAM10000 masks (Tschandl et al. 2020) + ISIC 2017 train masks",
                 "images": "HAM10000 area-downscaled to 200x150; ISIC 2017 256x256"},
        "split": {"method": "HAM10000 grouped by lesion_id, stratified by dx (StratifiedGroupKFold, 20 folds: "
                            "3 test, 3 val, 14 train), seed " + str(args.seed) + "; ISIC 2017 official train/val",
                  "file": args.split_file or None},
        "dataset_summary": dataset_summary(manifest),
        "files": files,
        "temperature": rule["temperature"],
        "logit_offsets": rule["logit_offsets"],
        "decision_rule": {"rule": "argmax of softmax((logits + logit_offsets) / temperature); offsets = -tau * log(train "
                                  "class prior), tau chosen on validation for balanced accuracy, temperature fitted on "
                                  "validation after the offsets", **rule},
        "ood": ood_report,
        "metrics": {"test": {"classification": classification, "segmentation": segmentation},
                    "isic2017_val": {"segmentation": isic_segmentation}},
        "ablation": ablation,
        "training_curves": training_curves(runs),
        "training_time_minutes": training_minutes(runs),
        "evaluation_seconds": round(time.time() - started, 1),
        "predictions_csv": "test_predictions.csv",
        "headline": {"balanced_accuracy": mask_cn["balanced_accuracy"], "macro_auc": mask_cn["macro_auc"],
                     "enhanced_sn_dice": segmentation["enhanced_sn"]["dice_mean"],
                     "isic2017_val_jaccard": isic_segmentation.get("enhanced_sn", {}).get("jaccard_mean")},
    }


def print_summary(card: dict) -> None:
    print(f"model card {card['version']}  (evaluation {card['evaluation_seconds']} s)")
    for row in card["ablation"]:
        print(f"  {row['comparison']:<32} {row['model']:<32} {row['metric']:<24} {row['value']:.4f}")
    print("  temperature", round(card["temperature"], 3), " OOD", json.dumps(card["ood"]["flagged_fraction"]))
    for name, entry in card["files"].items():
        print(f"  {name:<24} {entry['bytes'] / 2**20:6.2f} MiB  sha256 {entry['sha256'][:16]}")


if __name__ == "__main__":
    main()
