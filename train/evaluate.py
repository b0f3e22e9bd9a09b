"""Export the trained networks to weights/ and write the model card: every choice made on validation, every figure
measured on test, with bootstrap 95 % confidence intervals.

    python -m train.evaluate --data-dir ../shared/data --runs runs --weights weights
    python -m train.evaluate --data-dir MY_FOLDER --report OUT/     # the shipped model on your own labelled images

1. fp16 safetensors of coarse-SN, mask-CN and enhanced-SN (RUNS/<stage>/best.safetensors, with their metadata) go
   to WEIGHTS; every figure below is computed with those fp16 files, i.e. what the app ships.
2. Network outputs (train.network_outputs) on the train split (OOD model, similar-cases index), the validation
   split (HAM10000 val + the held-out part of ISIC 2017 train: every choice), and the two test sets: the
   lesion-grouped HAM10000 test split and the official ISIC 2017 validation set (other clinics; nothing is
   chosen on it).
3. Fitted on validation (train.fit_rules): decision rule (TTA views, logit adjustment, temperature), melanoma
   referral threshold, uncertainty levels, OOD thresholds, the PCA size of the similar-cases index.
4. Measured on test: classification (per class, AUCs, calibration), referral sensitivity / specificity,
   uncertainty levels' error rates and risk-coverage curves, OOD rates (incl. real non-dermoscopy photographs),
   segmentation with the E-layer ablation controls, retrieval precision@k, resolution consistency.
5. WEIGHTS/model_card.json, WEIGHTS/test_predictions.csv, WEIGHTS/ood.safetensors, WEIGHTS/case_index.*.
Outputs of the networks are cached by content (.cache/lesionlens/outputs), so re-running after a change of the
rules costs seconds.

With --report, nothing is trained or exported: the shipped model (WEIGHTS) is run on every labelled image of
DATA_DIR (any layout core.data.datasets reads) through core.analysis.folder_evaluation, the code behind the dashboard's
"Evaluate your data" page, and OUT/ gets report.json, predictions.csv, failures.csv and report.html.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from core.data.classes import CLASS_CODES, CLASS_INDEX, CLASSES, NUM_CLASSES, class_index
from core.data.dataset_summary import dataset_summary
from core.data.datasets import load_manifest
from core.decisions.decision_rule import DecisionRule
from core.analysis.inference import NETWORK_FILES, OOD_FILE
from core.analysis.metrics import bootstrap_interval, calibration, classification_metrics, risk_coverage
from core.decisions.ood import REFUSED_LEVELS, OODDetector
from core.imaging.preprocess import IMAGENET_MEAN, IMAGENET_STD
from core.decisions.referral import SCORES as REFERRAL_SCORES
from core.lesion.retrieval import CaseIndex
from core.imaging.tta import ALL_VIEWS
from core.data.splits import apply_split_file, assign_splits
from core.decisions.uncertainty import LEVELS, probability_scores
from core.io.weights_io import MODEL_CARD_NAME, save_weights, sha256_of
from train import fit_rules
from train.fit_context import context_report, table_contexts
from train.network_outputs import image_outputs, load_network, split_outputs

TEST_SETS = {"ham10000_test": "HAM10000 test (lesion-grouped)", "isic2017_test": "ISIC 2017 official validation"}
CONTROLS = ("coarse_sn_more", "enhanced_sn_zero")
RETRIEVAL_K = 8
KNN_K = 10
INDEX_DIMS = (32, 64, 128)


# ---------------------------------------------------------------- small helpers
def with_ci(statistic, n: int, groups=None) -> dict:
    value = statistic(np.arange(n))
    low, high = bootstrap_interval(statistic, n, groups)
    return {"value": None if value is None else float(value), "ci95": [low, high]}


def auc_or_none(truth: np.ndarray, score: np.ndarray) -> float | None:
    return float(roc_auc_score(truth, score)) if 0 < truth.sum() < len(truth) else None


def balanced_accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    present = np.unique(labels)
    pred = probs.argmax(1)
    return float(np.mean([(pred[labels == c] == c).mean() for c in present]))


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    aucs = [auc_or_none(labels == c, probs[:, c]) for c in range(NUM_CLASSES)]
    aucs = [a for a in aucs if a is not None]
    return float(np.mean(aucs)) if aucs else None


# ---------------------------------------------------------------- export
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


def read_tables(args) -> dict[str, pd.DataFrame]:
    manifest = load_manifest(args.data_dir)
    manifest = apply_split_file(manifest, args.split_file) if args.split_file else assign_splits(manifest, 42)
    tables = {"train": manifest[manifest["split"] == "train"], "val": manifest[manifest["split"] == "val"],
              "ham10000_test": manifest[(manifest["split"] == "test") & (manifest["source"] == "ham10000")],
              "isic2017_test": manifest[(manifest["split"] == "test") & (manifest["source"] == "isic2017")]}
    if args.max_images:
        tables = {k: pd.concat([g.sample(n=min(args.max_images, len(g)), random_state=0)
                                for _, g in t.groupby(["source", "dx"])]) for k, t in tables.items()}
    return {k: t.reset_index(drop=True) for k, t in tables.items()}, manifest


def labels_of(table: pd.DataFrame) -> np.ndarray:
    return np.array([class_index(d) for d in table["dx"]])


# ---------------------------------------------------------------- classification on a test set
def classification_report(table: pd.DataFrame, probs: np.ndarray, raw_probs: np.ndarray) -> dict:
    """Per-class metrics, calibration of exactly the shown probabilities (and of the plain softmax), and CIs of
    the headline figures (HAM10000: lesions resampled)."""
    y = labels_of(table)
    groups = table["lesion_id"].to_numpy()
    metrics = classification_metrics(y, probs, CLASS_CODES)
    metrics["calibration"] = {"before": calibration(raw_probs, y), "after": calibration(probs, y)}
    ci = {"balanced_accuracy": with_ci(lambda i: balanced_accuracy(y[i], probs[i]), len(y), groups),
          "macro_auc": with_ci(lambda i: macro_auc(y[i], probs[i]), len(y), groups)}
    for code in ("mel", "bkl", "nv"):
        k = CLASS_INDEX[code]
        if 0 < (y == k).sum() < len(y):
            ci[f"auc_{code}"] = with_ci(lambda i, k=k: auc_or_none(y[i] == k, probs[i, k]), len(y), groups)
    metrics["ci"] = ci
    return metrics


def referral_report(table: pd.DataFrame, probs: np.ndarray, rule) -> dict:
    y = labels_of(table)
    groups = table["lesion_id"].to_numpy()
    is_mel = y == CLASS_INDEX["mel"]
    score = rule.score_of(probs)
    refer = score >= rule.threshold
    return {"n_melanoma": int(is_mel.sum()), "n_other": int((~is_mel).sum()), "referred_share": float(refer.mean()),
            "sensitivity": with_ci(lambda i: refer[i][is_mel[i]].mean() if is_mel[i].any() else None, len(y), groups),
            "specificity": with_ci(lambda i: (~refer[i][~is_mel[i]]).mean() if (~is_mel[i]).any() else None, len(y), groups),
            "auc": with_ci(lambda i: auc_or_none(is_mel[i], score[i]), len(y), groups)}


def uncertainty_report(table: pd.DataFrame, probs: np.ndarray, score: np.ndarray, levels) -> dict:
    y = labels_of(table)
    groups = table["lesion_id"].to_numpy()
    errors = (probs.argmax(1) != y).astype(float)
    assigned = levels.levels(score)
    out = {"risk_coverage": risk_coverage(score, errors), "levels": {}}
    for level in LEVELS:
        chosen = assigned == level
        out["levels"][level] = {"share": float(chosen.mean()), "n": int(chosen.sum()),
                                "error_rate": with_ci(lambda i, c=chosen: errors[i][c[i]].mean() if c[i].any() else None,
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
                        **{name: with_ci(lambda i, v=v: v[i].mean(), len(v), groups)
                           for name, v in (("dice", dice_), ("jaccard", jac), ("jaccard_thresholded_065", thresholded))}}
    shipped = outputs.get("seg_enhanced_sn")
    out["paired_differences"] = {}
    for other in ("coarse_sn", *CONTROLS):
        if shipped is not None and f"seg_{other}" in outputs:
            diff = shipped[:, 1].astype(float) - outputs[f"seg_{other}"][:, 1].astype(float)
            out["paired_differences"][f"enhanced_sn - {other} (Jaccard)"] = with_ci(lambda i: diff[i].mean(), len(diff), groups)
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
        result["results"][name] = {"n": len(levels), "not_dermoscopy_share": float(np.isin(levels, REFUSED_LEVELS).mean()),
                                   "accepted": [n for n, lvl in zip(data["names"], levels) if lvl not in REFUSED_LEVELS]}
    return result


# ---------------------------------------------------------------- OOD probes
def real_photographs() -> tuple[list[str], list[np.ndarray]]:
    """Real photographs that are not dermoscopy, available offline: scikit-image's and scikit-learn's samples."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    names = ["astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
             "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "stereo_motorcycle", "page",
             "retina", "rocket", "text"]
    images = []
    for name in names:
        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)
        image = np.asarray(image)
        if image.dtype != np.uint8:
            image = (255 * (image.astype(float) / max(float(image.max()), 1))).astype(np.uint8)
        images.append(np.ascontiguousarray(np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image[..., :3]))
    samples = load_sample_images()
    for name, image in zip(("sklearn_china", "sklearn_flower"), samples.images):
        names.append(name)
        images.append(np.ascontiguousarray(image))
    return names, images


def synthetic_non_dermoscopic(n: int = 32, seed: int = 0) -> tuple[list[str], list[np.ndarray]]:
    """Images no dermatoscope produces: noise, flat colours, stripes, text-like blocks."""
    rng = np.random.default_rng(seed)
    h, w = 300, 400
    names, images = [], []
    for i in range(n):
        kind = ("noise", "flat", "stripes", "blocks")[i % 4]
        if kind == "noise":
            img = rng.integers(0, 256, (h, w, 3))
        elif kind == "flat":
            img = np.broadcast_to(rng.integers(0, 256, 3), (h, w, 3))
        elif kind == "stripes":
            img = np.broadcast_to(np.where((np.arange(w)[None, :, None] // rng.integers(4, 20)) % 2 == 0, 255,
                                           rng.integers(0, 120, 3)), (h, w, 3))
        else:
            img = np.full((h, w, 3), 255)
            for _ in range(60):
                y, x = rng.integers(0, h - 10), rng.integers(0, w - 30)
                img[y:y + 6, x:x + rng.integers(5, 30)] = 0
        names.append(f"{kind}_{i}")
        images.append(np.ascontiguousarray(img, dtype=np.uint8))
    return names, images


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


def retrieval_scores(index: CaseIndex, pooled: np.ndarray, y_query: np.ndarray, y_index: np.ndarray) -> dict:
    sims = index.similarities(index.embed(pooled))
    top = torch.topk(sims, RETRIEVAL_K, dim=1)
    neighbour_labels = y_index[top.indices.numpy()]
    votes = np.zeros((len(y_query), NUM_CLASSES))
    for j in range(RETRIEVAL_K):
        np.add.at(votes, (np.arange(len(y_query)), neighbour_labels[:, j]), top.values[:, j].numpy())
    return {"precision_at_k": float((neighbour_labels == y_query[:, None]).mean()),
            "knn_vote_balanced_accuracy": float(balanced_accuracy_score(y_query, votes.argmax(1))), "k": RETRIEVAL_K}


# ---------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--weights", default="weights")
    parser.add_argument("--split-file", default="")
    parser.add_argument("--version", default="")
    parser.add_argument("--max-images", type=int, default=0, help=">0: at most this many images per class, source and "
                                                                  "split (tests)")
    parser.add_argument("--use-cache", default="true", choices=("true", "false"))
    parser.add_argument("--report", default="", help="evaluate the shipped WEIGHTS on DATA_DIR and write OUT/ there")
    args = parser.parse_args(argv)
    if args.report:
        return folder_report(Path(args.data_dir), Path(args.weights), Path(args.report))
    runs, weights, use_cache = Path(args.runs), Path(args.weights), args.use_cache == "true"
    started = time.time()
    tables, manifest = read_tables(args)

    files = export_weights(runs, weights)
    nets = {arch: load_network(weights / file_name) for arch, file_name in NETWORK_FILES.items()}
    for extra in ("classifier", *CONTROLS):
        if (runs / extra / "best.safetensors").is_file():
            nets[extra] = load_network(runs / extra / "best.safetensors")
    outputs = {name: split_outputs(nets, table, segmentation=name != "train", use_cache=use_cache,
                                   views=(0,) if name == "train" else ALL_VIEWS)
               for name, table in tables.items()}
    y = {name: labels_of(table) for name, table in tables.items()}
    val_sources = tables["val"]["source"].to_numpy()

    # ---- decision rule (validation), probabilities everywhere
    priors = (np.bincount(y["train"], minlength=NUM_CLASSES) + 1) / (len(y["train"]) + NUM_CLASSES)
    rule, rule_fit = fit_rules.fit_decision_rule(outputs["val"]["logits"], y["val"], val_sources, priors)
    probs = {name: rule.probabilities(out["logits"]) for name, out in outputs.items() if name != "train"}
    # the context head's test figures are reported whether validation lets the model use it or not
    context_head, context_entry = context_report(rule, outputs["val"]["logits"], tables["val"])
    with_context = {name: rule.probabilities(outputs[name]["logits"], context_head.shift(table_contexts(tables[name])))
                    for name in TEST_SETS}
    plain = {name: DecisionRule().probabilities(out["logits"]) for name, out in outputs.items() if name != "train"}
    baseline_rule, ensemble = None, None
    if "classifier" in nets:
        baseline_rule, _ = fit_rules.fit_decision_rule(outputs["val"]["baseline_logits"], y["val"], val_sources, priors)
        both = {name: (probs[name] + baseline_rule.probabilities(outputs[name]["baseline_logits"])) / 2 for name in probs}
        ensemble = {"validation_criterion": {
            "mask_cn": fit_rules.criterion(probs["val"], y["val"], val_sources),
            "image_only": fit_rules.criterion(baseline_rule.probabilities(outputs["val"]["baseline_logits"]), y["val"],
                                              val_sources),
            "mean_of_both": fit_rules.criterion(both["val"], y["val"], val_sources)},
            "rule": "probabilities of mask-CN and the image-only classifier averaged, each under its own decision rule"}

    # ---- flip test-time augmentation of the segmenters (validation Dice)
    seg_tta = {name: float(outputs["val"][f"seg_{name}"][:, 0].mean()) for name in ("enhanced_sn", "enhanced_sn_tta")}
    seg_views = 4 if seg_tta["enhanced_sn_tta"] > seg_tta["enhanced_sn"] + fit_rules.SEG_TTA_MIN_GAIN else 1

    # ---- referral, similar cases, uncertainty, OOD (validation)
    referral, referral_fit = fit_rules.fit_referral(probs["val"], y["val"], val_sources)
    index, index_fit = fit_case_index(outputs, tables)
    train_index = CaseIndex.fit(outputs["train"]["pooled"], tables["train"], index_fit["dims"])

    def uncertainty_scores(name: str, knn_index: CaseIndex) -> dict[str, np.ndarray]:
        view_probs = np.stack([DecisionRule(1, rule.temperature, rule.logit_offsets).probabilities(v[None])
                               for v in outputs[name]["logits"][:max(rule.views, 1)]])
        scores = probability_scores(probs[name], view_probs if rule.views > 1 else None)
        scores["knn_distance"] = knn_index.knn_distance(outputs[name]["pooled"], KNN_K)
        return scores

    val_scores = uncertainty_scores("val", train_index)
    levels, uncertainty_fit = fit_rules.fit_uncertainty(val_scores, (probs["val"].argmax(1) != y["val"]).astype(float))
    ood_tensors = fit_rules.fit_ood(outputs["train"]["pooled"].astype(np.float32), y["train"],
                                    outputs["train"]["imagenet"].astype(np.float32))
    thresholds, unusual_score, ood_fit = fit_rules.fit_ood_thresholds(
        ood_tensors, lambda probe: ood_scores(probe, outputs["val"], train_index),
        (probs["val"].argmax(1) != y["val"]).astype(int))
    detector = OODDetector(ood_tensors, thresholds, unusual_score, 1 - fit_rules.OOD_UNUSUAL_QUANTILE)
    files[OOD_FILE] = save_weights(ood_tensors, weights / OOD_FILE, half=False)
    for path in index.save(weights):
        files[path.name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}

    # ---- test
    photo_names, photos = real_photographs()
    synthetic_names, synthetic = synthetic_non_dermoscopic()
    photo_out = {**image_outputs(nets, photos), "names": photo_names}
    synthetic_out = {**image_outputs(nets, synthetic), "names": synthetic_names}
    metrics, test_scores = {}, {}
    for name in TEST_SETS:
        table = tables[name]
        test_scores[name] = uncertainty_scores(name, index)[levels.score]
        entry = {"n_images": len(table), "classification": {"mask_cn": classification_report(table, probs[name], plain[name])},
                 "referral": referral_report(table, probs[name], referral),
                 "uncertainty": uncertainty_report(table, probs[name], test_scores[name], levels),
                 "segmentation": segmentation_report(table, outputs[name]),
                 "retrieval": retrieval_scores(index, outputs[name]["pooled"], y[name], labels_of(index.table))}
        entry["classification"]["mask_cn_single_view"] = classification_report(
            table, DecisionRule(1, rule.temperature, rule.logit_offsets).probabilities(outputs[name]["logits"]), plain[name])
        if baseline_rule is not None:
            entry["classification"]["classifier"] = classification_report(
                table, baseline_rule.probabilities(outputs[name]["baseline_logits"]),
                DecisionRule().probabilities(outputs[name]["baseline_logits"]))
            entry["classification"]["ensemble"] = classification_report(table, both[name], plain[name])
        entry["classification"]["mask_cn_context"] = classification_report(table, with_context[name], plain[name])
        entry["referral_with_context"] = referral_report(table, with_context[name], referral)
        metrics[name] = entry
    ood = ood_report(detector, outputs, tables, probs, photo_out, synthetic_out, index)
    ood.update(fit=ood_fit, unusual_share=1 - fit_rules.OOD_UNUSUAL_QUANTILE, method=(
        f"not_dermoscopy: chroma below {fit_rules.OOD_CHROMA_FACTOR} x its 0.1 % validation quantile, or 1 - cosine "
        f"similarity of ImageNet EfficientNet-Lite0 features (projected to {fit_rules.OOD_PROJECTION_DIMS} dims) to the "
        f"nearest of {fit_rules.OOD_REFERENCE_IMAGES} training images above its {fit_rules.OOD_IMAGENET_QUANTILE:.1%} "
        f"validation quantile; unusual: the distance with the best validation AUROC for wrong predictions "
        f"({unusual_score}) above its {fit_rules.OOD_UNUSUAL_QUANTILE:.0%} validation quantile"))

    predictions = prediction_rows(tables, probs, referral, levels, test_scores, detector, outputs, index, baseline_rule,
                                  with_context)
    predictions.to_csv(weights / "test_predictions.csv", index=False)
    card = build_card(args, manifest, files, nets, rule, rule_fit, referral, referral_fit, levels, uncertainty_fit,
                      ood, index_fit, metrics, resolution_consistency(nets, Path(args.data_dir), rule, args.max_images), runs, started)
    card["ensemble"] = ensemble
    card["patient_context"] = context_entry
    card["segmentation_tta"] = {"views": seg_views, "validation_dice": seg_tta, "rule": (
        f"flip TTA (4 views) of both segmenters only if it raises validation Dice by > {fit_rules.SEG_TTA_MIN_GAIN}")}
    (weights / MODEL_CARD_NAME).write_text(json.dumps(card, indent=1))
    print_summary(card)
    return card


def folder_report(data_dir: Path, weights: Path, out: Path) -> dict:
    from tqdm import tqdm

    from core.analysis.folder_evaluation import evaluate_folder
    from core.analysis.inference import Analyzer

    manifest = load_manifest(data_dir)
    analyzer = Analyzer.load(weights)
    with tqdm(total=len(manifest), desc="evaluating", unit="image") as bar:
        evaluation = evaluate_folder(analyzer, manifest, on_progress=lambda done, total: bar.update(1))
    out.mkdir(parents=True, exist_ok=True)
    evaluation.predictions.to_csv(out / "predictions.csv", index=False)
    pd.DataFrame(evaluation.failures, columns=["image_id", "error"]).to_csv(out / "failures.csv", index=False)
    (out / "report.json").write_text(json.dumps(evaluation.summary, indent=1))
    (out / "report.html").write_text(report_html(evaluation.summary, data_dir))
    ci = evaluation.summary.get("classification", {}).get("ci", {})
    print(f"{evaluation.summary['n_images']} images evaluated, {evaluation.summary['n_failed']} failed -> {out}")
    for name, entry in ci.items():
        print(f"  {name:<20} {entry['value']:.4f}  [{entry['ci95'][0]:.4f}, {entry['ci95'][1]:.4f}]")
    return evaluation.summary


def report_html(summary: dict, data_dir: Path) -> str:
    """A self-contained HTML summary of a folder evaluation (tables only, no scripts)."""
    import html

    parts = [f"<h1>LesionLens evaluation: {html.escape(str(data_dir))}</h1>",
             f"<p>Model {html.escape(str(summary.get('model_version')))}; {summary['n_images']} images evaluated, "
             f"{summary['n_failed']} failed, {summary['n_not_dermoscopy']} judged not dermoscopy (no diagnosis)"
             f"{', run cancelled' if summary.get('cancelled') else ''}.</p>"]
    cls = summary.get("classification")
    if cls:
        rows = [{"figure": k, "value": v["value"], "95% CI": f"{v['ci95'][0]:.3f}-{v['ci95'][1]:.3f}"
                 if v["ci95"][0] is not None else ""} for k, v in cls["ci"].items()]
        parts += ["<h2>Headline</h2>", pd.DataFrame(rows).to_html(index=False, float_format="%.3f"),
                  "<h2>Per class</h2>", pd.DataFrame(cls["per_class"]).T.to_html(float_format="%.3f"),
                  "<h2>Confusion matrix (rows: truth, columns: prediction)</h2>",
                  pd.DataFrame(cls["confusion_matrix"], index=CLASS_CODES, columns=CLASS_CODES).to_html(),
                  f"<h2>Melanoma referral</h2><p>{html.escape(json.dumps(summary['referral']))}</p>",
                  f"<p>Expected calibration error: {cls['calibration']['ece']:.3f}</p>"]
    if summary.get("segmentation"):
        seg = summary["segmentation"]
        parts.append(f"<h2>Segmentation</h2><p>Dice {seg['dice']['value']:.3f}, Jaccard {seg['jaccard']['value']:.3f} "
                     f"over {seg['n']} images with masks</p>")
    return "<!doctype html><meta charset='utf-8'><title>LesionLens evaluation</title>" + "\n".join(parts)


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


def training_curves(runs: Path) -> dict:
    curves = {}
    for path in sorted(runs.glob("*/history.json")):
        curves[path.parent.name] = json.loads(path.read_text())["history"]
    return curves


def training_minutes(curves: dict) -> dict:
    return {stage: {"epochs": len(history), "minutes": round(sum(e["seconds"] for e in history) / 60, 1),
                    "best_val_score": max(e["val_metric"] for e in history)}
            for stage, history in curves.items() if history}


def build_card(args, manifest, files, nets, rule, rule_fit, referral, referral_fit, levels, uncertainty_fit, ood,
               index_fit, metrics, resolution, runs: Path, started: float) -> dict:
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    mask_cn, coarse = nets["mask_cn"], nets["coarse_sn"]
    curves = training_curves(runs)
    ham, isic = metrics["ham10000_test"], metrics["isic2017_test"]
    ablation = []
    for name, title in TEST_SETS.items():
        for model, entry in metrics[name]["classification"].items():
            for metric, ci in entry["ci"].items():
                ablation.append({"data": title, "model": model, "metric": metric, **ci})
        for model, entry in metrics[name]["segmentation"].items():
            if model != "paired_differences":
                for metric in ("dice", "jaccard", "jaccard_thresholded_065"):
                    ablation.append({"data": title, "model": model, "metric": metric, **entry[metric]})
    return {
        "name": "LesionLens MB-DCNN",
        "version": args.version or f"mbdcnn-{mask_cn.meta.get('backbone', 'lite0')}-{created[:10]}",
        "created": created,
        "architecture": "Mutual Bootstrapping DCNN (Xie et al., IEEE TMI 2020): coarse-SN (U-Net) -> mask-CN "
                        "(4-channel classifier) -> CAM localisation map -> enhanced-SN (U-Net + E-layers)",
        "backbone": mask_cn.meta.get("backbone"),
        "class_names": list(CLASS_CODES),
        "classes": [{"code": c.code, "name": c.name, "malignant": c.malignant, "color": c.color} for c in CLASSES],
        "preprocessing": {**mask_cn.preprocessing.to_card(),
                          "jpeg_quality": {"classifier": mask_cn.preprocessing.jpeg_quality,
                                           "segmenter": coarse.preprocessing.jpeg_quality},
                          "resize": "crop to the field of view, then INTER_AREA to the network input size",
                          "normalisation": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
                          "mask_channel": "coarse-SN probability, (p - 0.5) / 0.25"},
        "input_size": {"classifier": dict(zip(("height", "width"), mask_cn.size)),
                       "segmenter": dict(zip(("height", "width"), coarse.size))},
        "data": {"classification": "HAM10000 train + ISIC 2017 train (85 %), CC BY-NC 4.0",
                 "segmentation": "HAM10000 masks (Tschandl et al. 2020) + ISIC 2017 train masks",
                 "validation": "HAM10000 val + 15 % of ISIC 2017 train (every choice)",
                 "test": "HAM10000 lesion-grouped test split; ISIC 2017 official validation set (other clinics)"},
        "split": {"method": "HAM10000 grouped by lesion_id, stratified by dx (StratifiedGroupKFold, 20 folds: 3 test, "
                            "3 val, 14 train), seed 42; ISIC 2017: official validation = test, stratified 15 % of "
                            "official train = val", "file": args.split_file or None},
        "dataset_summary": dataset_summary(manifest),
        "files": files,
        "decision_rule": {**rule.to_card(), "fit": rule_fit},
        "referral": {**referral.to_card(), "score_meaning": REFERRAL_SCORES[referral.score], "fit": referral_fit},
        "uncertainty": {**levels.to_card(), "fit": uncertainty_fit},
        "ood": ood,
        "retrieval": {"k": RETRIEVAL_K, "reference_set": "train + val (HAM10000, ISIC 2017)", **index_fit},
        "metrics": metrics,
        "ablation": ablation,
        "resolution_consistency": resolution,
        "training_curves": curves,
        "training_time_minutes": training_minutes(curves),
        "evaluation_seconds": round(time.time() - started, 1),
        "predictions_csv": "test_predictions.csv",
        "headline": {"ham10000_balanced_accuracy": ham["classification"]["mask_cn"]["ci"]["balanced_accuracy"],
                     "ham10000_macro_auc": ham["classification"]["mask_cn"]["ci"]["macro_auc"],
                     "ham10000_melanoma_auc": ham["classification"]["mask_cn"]["ci"].get("auc_mel"),
                     "isic2017_melanoma_auc": isic["classification"]["mask_cn"]["ci"].get("auc_mel"),
                     "isic2017_seborrhoeic_keratosis_auc": isic["classification"]["mask_cn"]["ci"].get("auc_bkl"),
                     "ham10000_enhanced_sn_dice": ham["segmentation"].get("enhanced_sn", {}).get("dice"),
                     "isic2017_enhanced_sn_jaccard": isic["segmentation"].get("enhanced_sn", {}).get("jaccard")},
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


if __name__ == "__main__":
    main()
