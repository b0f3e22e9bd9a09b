"""Export the trained networks to weights/ and write the model card: every choice made on validation, every figure
measured on test, with bootstrap 95 % confidence intervals.

    python -m calibration.evaluate --data-dir ../shared/data --runs runs --weights weights  # a step of calibrate
    python -m calibration.evaluate --data-dir MY_FOLDER --report OUT/  # the shipped model on your own labelled images

1. fp16 safetensors of coarse-SN, mask-CN and enhanced-SN (RUNS/<stage>/best.safetensors, with their metadata) go
   to WEIGHTS (calibration.model_card); every figure below is computed with those fp16 files, i.e. what the app ships.
2. Network outputs (train.network_outputs) on the train split (OOD model, similar-cases index), the validation
   split (HAM10000 val + the held-out part of ISIC 2017 train: every choice), and the two test sets: the
   lesion-grouped HAM10000 test split and the official ISIC 2017 validation set (other clinics; nothing is
   chosen on it).
3. Fitted on validation (calibration.fit_rules): decision rule (TTA views, logit adjustment, temperature), melanoma
   referral threshold, uncertainty levels, OOD thresholds, the PCA size of the similar-cases index.
4. Measured on test (calibration.evaluation_reports): classification (per class, AUCs, calibration), referral
   sensitivity / specificity, uncertainty levels' error rates and risk-coverage curves, OOD rates (incl. real
   non-dermoscopy photographs: calibration.ood_probes), segmentation with the E-layer ablation controls, retrieval
   precision@k, resolution consistency.
5. WEIGHTS/test_predictions.csv (calibration.model_card), WEIGHTS/ood.safetensors, WEIGHTS/case_index.*, and the card
   sections above (`evaluate` returns them; calibration.calibrate merges them with the later steps' and writes the card
   once; this command alone merges them into the card in WEIGHTS, keeping the other steps' sections).
The split is the one the runs were trained on (their history.json configs), or --split-file.
Outputs of the networks are cached by content (.cache/lesionlens/outputs), so re-running after a change of the
rules costs seconds.

With --report, nothing is trained or exported (calibration.folder_report): the shipped model (WEIGHTS) is run on every
labelled image of DATA_DIR (any layout core.data.datasets reads) through core.analysis.folder_evaluation, the code
behind the dashboard's "Evaluate your data" page, and OUT/ gets report.json, predictions.csv, failures.csv and
report.html.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.analysis.inference import NETWORK_FILES, OOD_FILE
from core.data.classes import NUM_CLASSES
from core.data.datasets import load_manifest
from core.decisions.decision_rule import DecisionRule
from core.decisions.model_card import CALIBRATE_COMMAND, read_card_json
from core.decisions.ood import OODDetector
from core.decisions.referral import ReferralRule
from core.decisions.uncertainty import UncertaintyLevels, probability_scores
from core.imaging.tta import ALL_VIEWS
from core.io.weights_io import save_weights, sha256_of
from core.lesion.retrieval import CaseIndex
from train.network_outputs import image_outputs, load_network, split_outputs
from calibration import fit_rules
from calibration.card_io import Split, write_sections
from calibration.evaluation_reports import (CONTROLS, KNN_K, TEST_SETS, classification_report, labels_of, ood_report,
                                            ood_scores, referral_report, resolution_consistency, retrieval_scores,
                                            segmentation_report, uncertainty_report)
from calibration.fit_context import context_report, table_contexts
from calibration.folder_report import folder_report
from calibration.model_card import build_card, export_weights, prediction_rows, print_summary
from calibration.ood_probes import real_photographs, synthetic_non_dermoscopic


# The datasets the card's rules are fitted and its figures measured on. The acral images (no lesion masks, so no
# segmentation figures) join once the card holds them as a test set and a held-out source of their own.
CARD_SOURCES = ("ham10000", "isic2017")


def read_tables(data_dir, split: Split, max_images: int = 0) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """The images by role (train, val, ham10000_test, isic2017_test; also calibration.out_of_source's) and the manifest
    of CARD_SOURCES; max_images > 0: at most that many per source, class and role (tests)."""
    manifest = split.apply(load_manifest(data_dir, sources=CARD_SOURCES))
    tables = {"train": manifest[manifest["split"] == "train"], "val": manifest[manifest["split"] == "val"],
              "ham10000_test": manifest[(manifest["split"] == "test") & (manifest["source"] == "ham10000")],
              "isic2017_test": manifest[(manifest["split"] == "test") & (manifest["source"] == "isic2017")]}
    if max_images:
        tables = {k: pd.concat([g.sample(n=min(max_images, len(g)), random_state=0)
                                for _, g in t.groupby(["source", "dx"])]) for k, t in tables.items()}
    return {k: t.reset_index(drop=True) for k, t in tables.items()}, manifest


# ---------------------------------------------------------------- the evaluation's parts
@dataclass(frozen=True)
class Evidence:
    """What every choice and figure is computed from: the images by role, the networks (the fp16 shipped ones and the
    runs' image-only classifier and E-layer controls when trained) and their outputs and labels on each role."""
    tables: dict[str, pd.DataFrame]
    nets: dict
    outputs: dict[str, dict]
    labels: dict[str, np.ndarray]

    @property
    def val_sources(self) -> np.ndarray:
        return self.tables["val"]["source"].to_numpy()


@dataclass(frozen=True)
class Probabilities:
    """The decision rule fitted on validation and the probabilities of every role but train: under the rule (probs),
    without it (plain: the reference of each report), with the patient-context head's shift (test sets) and, when the
    image-only classifier was trained, its own rule and its average with mask-CN (both)."""
    rule: DecisionRule
    rule_fit: dict
    probs: dict[str, np.ndarray]
    plain: dict[str, np.ndarray]
    with_context: dict[str, np.ndarray]
    context_entry: dict
    baseline_rule: DecisionRule | None
    both: dict[str, np.ndarray] | None
    ensemble: dict | None


@dataclass(frozen=True)
class ReliabilityRules:
    """The rules fitted on validation after the decision rule: referral, similar-cases index, uncertainty levels and
    the OOD check (its tensors saved to WEIGHTS)."""
    referral: ReferralRule
    referral_fit: dict
    index: CaseIndex
    index_fit: dict
    levels: UncertaintyLevels
    uncertainty_fit: dict
    ood_tensors: dict
    detector: OODDetector
    ood_fit: dict


def run_networks(runs: Path, weights: Path, tables: dict[str, pd.DataFrame], use_cache: bool) -> Evidence:
    """The exported fp16 networks (and the runs' extra ones) over every role: 8 views except on train."""
    nets = {arch: load_network(weights / file_name) for arch, file_name in NETWORK_FILES.items()}
    for extra in ("classifier", *CONTROLS):
        if (runs / extra / "best.safetensors").is_file():
            nets[extra] = load_network(runs / extra / "best.safetensors")
    outputs = {name: split_outputs(nets, table, segmentation=name != "train", use_cache=use_cache,
                                   views=(0,) if name == "train" else ALL_VIEWS)
               for name, table in tables.items()}
    return Evidence(tables, nets, outputs, {name: labels_of(table) for name, table in tables.items()})


def fit_probabilities(ev: Evidence) -> Probabilities:
    """The decision rule on validation (priors from train), the context head, the image-only baseline's rule."""
    y, outputs, val_sources = ev.labels, ev.outputs, ev.val_sources
    priors = (np.bincount(y["train"], minlength=NUM_CLASSES) + 1) / (len(y["train"]) + NUM_CLASSES)
    rule, rule_fit = fit_rules.fit_decision_rule(outputs["val"]["logits"], y["val"], val_sources, priors)
    probs = {name: rule.probabilities(out["logits"]) for name, out in outputs.items() if name != "train"}
    # the context head's test figures are reported whether validation lets the model use it or not
    context_head, context_entry = context_report(rule, outputs["val"]["logits"], ev.tables["val"])
    with_context = {name: rule.probabilities(outputs[name]["logits"],
                                             context_head.shift(table_contexts(ev.tables[name])))
                    for name in TEST_SETS}
    plain = {name: DecisionRule().probabilities(out["logits"]) for name, out in outputs.items() if name != "train"}
    baseline_rule, both, ensemble = None, None, None
    if "classifier" in ev.nets:
        baseline_rule, _ = fit_rules.fit_decision_rule(outputs["val"]["baseline_logits"], y["val"], val_sources, priors)
        both = {name: (probs[name] + baseline_rule.probabilities(outputs[name]["baseline_logits"])) / 2
                for name in probs}
        ensemble = {"validation_criterion": {
            "mask_cn": fit_rules.criterion(probs["val"], y["val"], val_sources),
            "image_only": fit_rules.criterion(baseline_rule.probabilities(outputs["val"]["baseline_logits"]), y["val"],
                                              val_sources),
            "mean_of_both": fit_rules.criterion(both["val"], y["val"], val_sources)},
            "rule": "probabilities of mask-CN and the image-only classifier averaged, each under its own decision rule"}
    return Probabilities(rule, rule_fit, probs, plain, with_context, context_entry, baseline_rule, both, ensemble)


def segmentation_tta(outputs: dict[str, dict]) -> dict:
    """The card's segmentation_tta section: flip TTA of the segmenters only if it raises validation Dice enough."""
    dice = {name: float(outputs["val"][f"seg_{name}"][:, 0].mean()) for name in ("enhanced_sn", "enhanced_sn_tta")}
    views = 4 if dice["enhanced_sn_tta"] > dice["enhanced_sn"] + fit_rules.SEG_TTA_MIN_GAIN else 1
    return {"views": views, "validation_dice": dice, "rule": (
        f"flip TTA (4 views) of both segmenters only if it raises validation Dice by > {fit_rules.SEG_TTA_MIN_GAIN}")}


def uncertainty_scores(ev: Evidence, p: Probabilities, name: str, knn_index: CaseIndex) -> dict[str, np.ndarray]:
    """Every candidate uncertainty score of role `name`'s images (the kNN distance to `knn_index`)."""
    rule = p.rule
    view_probs = np.stack([rule.single_view().probabilities(v[None])
                           for v in ev.outputs[name]["logits"][:max(rule.views, 1)]])
    scores = probability_scores(p.probs[name], view_probs if rule.views > 1 else None)
    scores["knn_distance"] = knn_index.knn_distance(ev.outputs[name]["pooled"], KNN_K)
    return scores


def fit_reliability_rules(ev: Evidence, p: Probabilities) -> ReliabilityRules:
    """Referral threshold, similar-cases index, uncertainty levels and OOD thresholds, all on validation."""
    y, outputs = ev.labels, ev.outputs
    wrong = p.probs["val"].argmax(1) != y["val"]
    referral, referral_fit = fit_rules.fit_referral(p.probs["val"], y["val"], ev.val_sources)
    index, index_fit = fit_rules.fit_case_index(outputs, ev.tables)
    # validation images' kNN distance is to the training images alone (the shipped index also holds validation's)
    train_index = CaseIndex.fit(outputs["train"]["pooled"], ev.tables["train"], index_fit["dims"])
    levels, uncertainty_fit = fit_rules.fit_uncertainty(uncertainty_scores(ev, p, "val", train_index),
                                                        wrong.astype(float))
    ood_tensors = fit_rules.fit_ood(outputs["train"]["pooled"].astype(np.float32), y["train"],
                                    outputs["train"]["imagenet"].astype(np.float32))
    thresholds, unusual_score, ood_fit = fit_rules.fit_ood_thresholds(
        ood_tensors, lambda probe: ood_scores(probe, outputs["val"], train_index), wrong.astype(int))
    detector = OODDetector(ood_tensors, thresholds, unusual_score, 1 - fit_rules.OOD_UNUSUAL_QUANTILE)
    return ReliabilityRules(referral, referral_fit, index, index_fit, levels, uncertainty_fit, ood_tensors, detector,
                            ood_fit)


def save_rule_files(rules: ReliabilityRules, weights: Path, files: dict) -> None:
    """The OOD tensors and the similar-cases index into WEIGHTS, each with its sha256 in `files` (the card's)."""
    files[OOD_FILE] = save_weights(rules.ood_tensors, weights / OOD_FILE, half=False)
    for path in rules.index.save(weights):
        files[path.name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}


def measure_on_test(ev: Evidence, p: Probabilities, rules: ReliabilityRules) -> tuple[dict, dict[str, np.ndarray]]:
    """Per test set, every figure the card reports (classification of each model variant, referral, uncertainty,
    segmentation, retrieval); and each test image's uncertainty score."""
    metrics, test_scores = {}, {}
    for name in TEST_SETS:
        table, outputs, probs = ev.tables[name], ev.outputs[name], p.probs[name]
        test_scores[name] = uncertainty_scores(ev, p, name, rules.index)[rules.levels.score]
        entry = {"n_images": len(table),
                 "classification": {"mask_cn": classification_report(table, probs, p.plain[name])},
                 "referral": referral_report(table, probs, rules.referral),
                 "uncertainty": uncertainty_report(table, probs, test_scores[name], rules.levels),
                 "segmentation": segmentation_report(table, outputs),
                 "retrieval": retrieval_scores(rules.index, outputs["pooled"], ev.labels[name],
                                               labels_of(rules.index.table))}
        entry["classification"]["mask_cn_single_view"] = classification_report(
            table, p.rule.single_view().probabilities(outputs["logits"]), p.plain[name])
        if p.baseline_rule is not None:
            entry["classification"]["classifier"] = classification_report(
                table, p.baseline_rule.probabilities(outputs["baseline_logits"]),
                DecisionRule().probabilities(outputs["baseline_logits"]))
            entry["classification"]["ensemble"] = classification_report(table, p.both[name], p.plain[name])
        entry["classification"]["mask_cn_context"] = classification_report(table, p.with_context[name], p.plain[name])
        entry["referral_with_context"] = referral_report(table, p.with_context[name], rules.referral)
        metrics[name] = entry
    return metrics, test_scores


def ood_section(ev: Evidence, p: Probabilities, rules: ReliabilityRules, photo_out: dict, synthetic_out: dict) -> dict:
    """The card's ood section: the check's rates on the test sets and on non-dermoscopy images, how it was fitted."""
    ood = ood_report(rules.detector, ev.outputs, ev.tables, p.probs, photo_out, synthetic_out, rules.index)
    ood.update(fit=rules.ood_fit, unusual_share=1 - fit_rules.OOD_UNUSUAL_QUANTILE, method=(
        f"not_dermoscopy: chroma below {fit_rules.OOD_CHROMA_FACTOR} x its 0.1 % validation quantile, or 1 - cosine "
        f"similarity of ImageNet EfficientNet-Lite0 features (projected to {fit_rules.OOD_PROJECTION_DIMS} dims) "
        f"to the nearest of {fit_rules.OOD_REFERENCE_IMAGES} training images above its "
        f"{fit_rules.OOD_IMAGENET_QUANTILE:.1%} validation quantile; unusual: the distance with the best validation "
        f"AUROC for wrong predictions "
        f"({rules.detector.unusual_score}) above its {fit_rules.OOD_UNUSUAL_QUANTILE:.0%} validation quantile"))
    return ood


def probe_outputs(nets: dict) -> tuple[dict, dict]:
    """The networks' outputs on real photographs and on synthetic images that are not dermoscopy (ood_probes)."""
    photo_names, photos = real_photographs()
    synthetic_names, synthetic = synthetic_non_dermoscopic()
    return ({**image_outputs(nets, photos), "names": photo_names},
            {**image_outputs(nets, synthetic), "names": synthetic_names})


# ---------------------------------------------------------------- the step
def evaluate(data_dir: Path, runs: Path, weights: Path, split: Split, version: str = "", max_images: int = 0,
             use_cache: bool = True) -> dict:
    """Export the networks to WEIGHTS, fit the rules on validation, measure on test; returns the card sections."""
    started = time.time()
    tables, manifest = read_tables(data_dir, split, max_images)
    files = export_weights(runs, weights)
    ev = run_networks(runs, weights, tables, use_cache)
    p = fit_probabilities(ev)
    rules = fit_reliability_rules(ev, p)
    save_rule_files(rules, weights, files)
    photo_out, synthetic_out = probe_outputs(ev.nets)
    metrics, test_scores = measure_on_test(ev, p, rules)
    ood = ood_section(ev, p, rules, photo_out, synthetic_out)

    predictions = prediction_rows(tables, p.probs, rules.referral, rules.levels, test_scores, rules.detector,
                                  ev.outputs, rules.index, p.baseline_rule, p.with_context)
    predictions.to_csv(weights / "test_predictions.csv", index=False)
    card = build_card(version, split, manifest, files, ev.nets, p.rule, p.rule_fit, rules.referral, rules.referral_fit,
                      rules.levels, rules.uncertainty_fit, ood, rules.index_fit, metrics,
                      resolution_consistency(ev.nets, Path(data_dir), p.rule, max_images), runs, started)
    card["ensemble"] = p.ensemble
    card["patient_context"] = p.context_entry
    card["segmentation_tta"] = segmentation_tta(ev.outputs)
    print_summary(card)
    return card


# ---------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--weights", default="weights")
    parser.add_argument("--split-file", default="", help="default: the split the runs were trained on")
    parser.add_argument("--version", default="")
    parser.add_argument("--max-images", type=int, default=0, help=">0: at most this many images per class, source and "
                                                                  "split (tests)")
    parser.add_argument("--use-cache", default="true", choices=("true", "false"))
    parser.add_argument("--report", default="", help="evaluate the shipped WEIGHTS on DATA_DIR and write OUT/ there")
    args = parser.parse_args(argv)
    if args.report:
        return folder_report(Path(args.data_dir), Path(args.weights), Path(args.report))
    runs, weights = Path(args.runs), Path(args.weights)
    previous = read_card_json(weights)  # alone, this step updates a calibrated card (calibration.calibrate builds one)
    split = Split(None, args.split_file) if args.split_file else Split.of_runs(runs)
    sections = evaluate(Path(args.data_dir), runs, weights, split, args.version, args.max_images,
                        args.use_cache == "true")
    write_sections(weights, sections)
    kept = sorted(set(previous) - set(sections) - {"calibration_seconds"})
    print(f"kept from the previous calibration (fitted for the networks it had): {', '.join(kept)}; "
          f"`{CALIBRATE_COMMAND}` refits every section")
    return sections


if __name__ == "__main__":
    main()
