"""Out-of-source evaluation: how the model and every reliability statement it makes fare at a clinic it has not seen.

    python -m calibration.out_of_source --data-dir ../shared/data --weights weights

HAM10000 holds four acquisition sources and ISIC 2017 is a fifth (core.data.acquisition). A source's *evaluation images*
are its validation and test split images, which no network was trained on. The command

1. reports the shipped model's figures per source (classification, referral, triage, uncertainty, unusual flag);
2. leave one source out, classifier: for each source S, heads on frozen features (calibration.source_heads) fitted on
   the training images of the other sources, scored on S, one row per recipe (the levers compared);
3. leave one source out, rules: every reliability rule (per-class referral thresholds of the triage, the "low"
   uncertainty cut, the unusual flag with an OOD model refitted without S, the conformal prediction sets) is fitted
   on the validation images of the other sources (calibration.fit_source_robust: the worst source binds) and applied to
   S; the settings of each rule (target, score) are chosen by these held-out figures;
4. fits the shipped rules the same way on every source's validation images: the card sections `triage`,
   `referral`, `uncertainty`, `ood`, `conformal` (superseding evaluate's validation-pooled referral, uncertainty and
   unusual threshold) with their out-of-source figures, which the screens quote, and `out_of_source` (per source,
   per recipe, per skin-tone group, similar cases);
5. rewrites the rule columns of weights/test_predictions.csv (refer, uncertainty_level, ood_level) and returns the
   card's test-set figures of those rules (`metrics`), and writes runs/oos/predictions.csv (every evaluation image:
   shipped and leave-one-source-out predictions). The `triage` column needs the image-quality flags, so the
   image-quality step writes it (calibration.fit_image_quality.write_triage_column).
`out_of_source` returns the sections (calibration.calibrate merges them); this command alone merges them into the card
in WEIGHTS. The split is the card's (the shipped model's), or --split-file.
Network outputs come from train.network_outputs (cached by content), as in calibration.evaluate.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from core.analysis.inference import NETWORK_FILES, OOD_FILE
from core.analysis.metrics import balanced_accuracy, binary_auc, format_with_ci, macro_auc, value_with_ci
from core.data.acquisition import SOURCE_NAMES, acquisition_sources
from core.data.classes import CLASS_CODES, CLASS_INDEX, MALIGNANT_CODES, MALIGNANT_INDICES, NUM_CLASSES
from core.decisions.conformal import PredictionSets
from core.decisions.decision_rule import DecisionRule
from core.decisions.model_card import read_card_json
from core.decisions.ood import OODDetector
from core.decisions.ood_levels import REFUSED_LEVELS
from core.decisions.referral import ReferralRule, melanoma_score
from core.decisions.triage import CLEAR_CLASS, TriageRule
from core.decisions.uncertainty import LEVELS, UncertaintyLevels, probability_scores
from core.imaging.tta import ALL_VIEWS
from core.lesion.retrieval import CaseIndex
from core.lesion.skin_tone import ITA_GROUPS, ita_degrees, ita_group
from train.network_outputs import load_network, split_outputs
from calibration import fit_rules
from calibration.card_io import Split, write_sections
from calibration.evaluate import read_tables
from calibration.evaluation_reports import referral_report, uncertainty_report
from calibration.fit_image_quality import write_triage_column
from calibration.fit_source_robust import (MIN_POSITIVES, class_referral_thresholds, clear_threshold,
                                           conformal_quantile, low_uncertainty_cut)
from calibration.source_heads import RECIPES, fit_recipe, softmax

REFERRAL_TARGETS = (0.80, 0.85, 0.90, 0.95)  # sensitivity targets tried for the triage thresholds
REFERRAL_FITS = ("every_source", "pooled")  # the target holds in every fitting source, or on their pooled images
LOW_ERROR_TARGETS = (0.03, 0.05, 0.08)   # error bounds tried for the "low" uncertainty cut
LOW_FITS = ("every_source", "pooled")     # the bound holds in every fitting source, or on their pooled images
MIN_LOW_IMAGES = 20                      # a held-out source's "low" error counts for the choice from this many images on
CLEAR_TARGETS = (0.005, 0.01, 0.02)      # malignant shares tried above the clear-nevus threshold when fitting it
CLEAR_FITS = ("every_source", "pooled")   # the share holds in every fitting source, or on their pooled images
CLEAR_MARGINS = (1.0, 0.5, 0.25)          # fractions of the referral thresholds every malignant class must stay below
HELD_OUT_CLEAR_MAX_MALIGNANT = 0.01       # the bound on "no referral" at a new clinic (pooled) ...
HELD_OUT_CLEAR_MAX_MISSED = 0.01          # ... and at most this share of any held-out clinic's malignant lesions cleared
MIN_MALIGNANT = 50                        # a held-out source counts for that bound from this many malignant lesions
UNCERTAINTY_SCORES = ("tta_disagreement", "max_probability", "entropy")
UNUSUAL_CANDIDATES = ("feature_distance", "imagenet_distance", "case_distance")
CONFORMAL_COVERAGE = 0.9
HELD_OUT_LOW_MAX_ERROR = 0.10            # the bound on "low" at a new clinic; settings are chosen against it
MIN_HELD_OUT_SENSITIVITY = 0.85          # the bound on melanoma referral at a new clinic
NEIGHBOURS = 8


# ---------------------------------------------------------------- data
def evaluation_data(data_dir: Path, weights: Path, split: Split, max_images: int, mask_cn: Path | None = None
                    ) -> tuple[pd.DataFrame, dict, pd.DataFrame, dict]:
    """(evaluation table, its network outputs, training table, its outputs), each table with `acquisition`.
    mask_cn: another mask-CN weight file in place of WEIGHTS' (a candidate, calibration.compare_triage)."""
    tables, _ = read_tables(data_dir, split, max_images)
    nets = load_networks(weights, mask_cn)
    parts = ("val", "ham10000_test", "isic2017_test")
    outs = [split_outputs(nets, tables[p], segmentation=False, views=ALL_VIEWS) for p in parts]
    evaluation = pd.concat([tables[p] for p in parts], ignore_index=True)
    outputs = {k: np.concatenate([o[k] for o in outs], axis=1 if k == "logits" else 0)
               for k in ("logits", "pooled", "imagenet", "chroma")}
    train = tables["train"]
    train_out = split_outputs(nets, train, segmentation=False, views=(0,))
    for table in (evaluation, train):
        add_sources(table, data_dir)
    return evaluation, outputs, train, train_out


def load_networks(weights: Path, mask_cn: Path | None = None) -> dict:
    """The three networks of WEIGHTS (mask-CN from the file `mask_cn` when given)."""
    nets = {arch: load_network(weights / name) for arch, name in NETWORK_FILES.items()}
    if mask_cn is not None:
        nets["mask_cn"] = load_network(mask_cn)
    return nets


def add_sources(table: pd.DataFrame, data_dir: Path, acral_contributors: bool = False) -> None:
    """The columns every held-out figure needs: `acquisition` (core.data.acquisition) and `group`, the lesion id
    (the image's id without one), the unit the bootstrap resamples."""
    table["acquisition"] = acquisition_sources(table, data_dir, acral_contributors).to_numpy()
    table["group"] = np.where(table["lesion_id"].fillna("") != "", table["lesion_id"].fillna(""), table["image_id"])


@dataclass(frozen=True)
class EvaluationImages:
    """Every evaluation image (each source's validation and test split images) as arrays over the same rows: rules
    are fitted on the validation rows of some sources and judged on the rows of the one left out."""
    labels: np.ndarray                  # class index
    probs: np.ndarray                   # probabilities under the card's decision rule
    groups: np.ndarray                  # lesion id (the image's id without one): the unit the bootstrap resamples
    acquisition: np.ndarray             # acquisition source (core.data.acquisition)
    is_val: np.ndarray                  # a validation image: the rules are fitted on these only
    uncertainty: dict[str, np.ndarray]  # each candidate uncertainty score (core.decisions.uncertainty)
    pooled: np.ndarray                  # mask-CN's pooled features
    imagenet: np.ndarray                # the ImageNet backbone's features


@dataclass(frozen=True)
class TrainingImages:
    """The training split's images: what the heads, OOD models and case indexes fitted without a source learn from."""
    labels: np.ndarray
    acquisition: np.ndarray
    pooled: np.ndarray
    imagenet: np.ndarray


def evaluation_images(evaluation: pd.DataFrame, outputs: dict, card: dict) -> EvaluationImages:
    """The evaluation rows with their probabilities and uncertainty scores under the card's decision rule."""
    entry = card["decision_rule"]
    rule = DecisionRule(int(entry["views"]), float(entry["temperature"]), tuple(entry["logit_offsets"]))
    probs = rule.probabilities(outputs["logits"])
    single = rule.single_view()
    view_probs = np.stack([single.probabilities(v[None]) for v in outputs["logits"][:rule.views]])
    return EvaluationImages(
        labels=np.array([CLASS_INDEX[c] for c in evaluation["dx"]]), probs=probs,
        groups=evaluation["group"].to_numpy(), acquisition=evaluation["acquisition"].to_numpy(),
        is_val=(evaluation["split"] == "val").to_numpy(),
        uncertainty=probability_scores(probs, view_probs if rule.views > 1 else None),
        pooled=outputs["pooled"].astype(np.float32), imagenet=outputs["imagenet"].astype(np.float32))


def training_images(train: pd.DataFrame, train_out: dict) -> TrainingImages:
    return TrainingImages(labels=np.array([CLASS_INDEX[c] for c in train["dx"]]),
                          acquisition=train["acquisition"].to_numpy(), pooled=train_out["pooled"].astype(np.float32),
                          imagenet=train_out["imagenet"].astype(np.float32))


class UnusualDistances:
    """The candidate unusual-image distances of every evaluation image, from an OOD model and a case index fitted on
    the training images of every source but `source` (None: the shipped OOD model, all sources); each computed once."""

    def __init__(self, ev: EvaluationImages, tr: TrainingImages, train: pd.DataFrame, shipped_ood: dict, card: dict):
        self.ev, self.tr, self.train, self.shipped_ood = ev, tr, train, shipped_ood
        self.knn_k, self.index_dims = int(card["retrieval"]["knn_k"]), int(card["retrieval"]["dims"])
        self.computed: dict = {}

    def __call__(self, source: str | None) -> dict[str, np.ndarray]:
        if source in self.computed:
            return self.computed[source]
        ev, tr = self.ev, self.tr
        train_keep = tr.acquisition != source
        tensors = self.shipped_ood if source is None else fit_rules.fit_ood(
            tr.pooled[train_keep], tr.labels[train_keep], tr.imagenet[train_keep])
        probe = OODDetector(tensors, {"chroma": 0, "imagenet_distance": 0, "unusual": 0}, "feature_distance")
        index = CaseIndex.fit(tr.pooled[train_keep], self.train[train_keep.tolist()].reset_index(drop=True),
                              self.index_dims)
        self.computed[source] = {"feature_distance": probe.feature_distance(ev.pooled),
                                 "imagenet_distance": probe.imagenet_distance(ev.imagenet),
                                 "case_distance": index.knn_distance(ev.pooled, self.knn_k)}
        return self.computed[source]


def skin_tones(table: pd.DataFrame) -> np.ndarray:
    """ITA (degrees) of every row from its image and reference lesion mask."""
    angles = []
    for image_path, mask_path in zip(table["image_path"], table["mask_path"]):
        rgb = cv2.imread(image_path, cv2.IMREAD_COLOR)[:, :, ::-1]
        mask = cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE) if mask_path else np.zeros(rgb.shape[:2], np.uint8)
        angles.append(ita_degrees(np.ascontiguousarray(rgb), mask))
    return np.array(angles)


# ---------------------------------------------------------------- figures
def classification_figures(labels, probs, groups) -> dict:
    mel = labels == CLASS_INDEX["mel"]
    return {"n": int(len(labels)), "classes_present": int(len(np.unique(labels))), "melanomas": int(mel.sum()),
            "class_counts": {c: int((labels == i).sum()) for i, c in enumerate(CLASS_CODES)},
            "melanoma_auc": value_with_ci(lambda i: binary_auc(mel[i], probs[i, CLASS_INDEX["mel"]]), len(labels),
                                          groups),
            "balanced_accuracy": value_with_ci(lambda i: balanced_accuracy(labels[i], probs[i].argmax(1)),
                                               len(labels), groups),
            "macro_auc": macro_auc(labels, probs)}


def rule_figures(labels, probs, groups, held: dict) -> dict:
    """The reliability statements' figures on a set of images judged by rules fitted without them (`held`: the
    per-image outputs of RuleFit.apply: verdicts, unc, unusual, sets, mel_refer)."""
    verdicts, unc_levels, unusual, sets = held["verdicts"], held["unc"], held["unusual"], held["sets"]
    wrong = probs.argmax(1) != labels
    mel = labels == CLASS_INDEX["mel"]
    malignant = np.isin(labels, MALIGNANT_INDICES)
    refer = verdicts == "refer"
    low = unc_levels == "low"
    out = {"refer": {"melanoma_sensitivity": value_with_ci(lambda i: refer[i][mel[i]].mean() if mel[i].any() else None,
                                                 len(labels), groups),
                     "malignant_sensitivity": float(refer[malignant].mean()) if malignant.any() else None,
                     "benign_specificity": float((~refer[~malignant]).mean()) if (~malignant).any() else None,
                     "share": float(refer.mean())}}
    for level in ("review", "no_referral"):
        chosen = verdicts == level
        out[level] = {"share": float(chosen.mean()), "images": int(chosen.sum()),
                      "malignant_share": float(malignant[chosen].mean()) if chosen.any() else None,
                      "error_rate": float(wrong[chosen].mean()) if chosen.any() else None}
    cleared = verdicts == "no_referral"
    out["no_referral"]["malignant_cleared"] = int(malignant[cleared].sum())
    out["no_referral"]["malignant_lesions"] = int(malignant.sum())
    out["no_referral"]["malignant_share_ci95"] = value_with_ci(
        lambda i: malignant[i][cleared[i]].mean() if cleared[i].any() else None, len(labels), groups)["ci95"]
    out["no_referral"]["share_ci95"] = value_with_ci(lambda i: cleared[i].mean(), len(labels), groups)["ci95"]
    out["uncertainty"] = {lvl: {"share": float((unc_levels == lvl).mean()), "images": int((unc_levels == lvl).sum()),
                                "error_rate": float(wrong[unc_levels == lvl].mean()) if (unc_levels == lvl).any() else None}
                          for lvl in LEVELS}
    out["uncertainty"]["low"]["error_rate_ci95"] = value_with_ci(
        lambda i: wrong[i][low[i]].mean() if low[i].any() else None, len(labels), groups)["ci95"]
    rest_error = wrong[~unusual].mean() if (~unusual).any() else None
    out["unusual"] = {"share": float(unusual.mean()),
                      "error_rate_flagged": float(wrong[unusual].mean()) if unusual.any() else None,
                      "error_rate_rest": None if rest_error is None else float(rest_error),
                      "error_ratio": (float(wrong[unusual].mean() / rest_error) if unusual.any() and rest_error else None)}
    covered = sets[np.arange(len(labels)), labels]
    out["conformal"] = {"coverage": float(covered.mean()), "mean_set_size": float(sets.sum(1).mean())}
    mel_rule = held["mel_refer"]
    out["referral_mel_rule"] = {"sensitivity": float(mel_rule[mel].mean()) if mel.any() else None,
                                "specificity": float((~mel_rule[~mel]).mean()) if (~mel).any() else None}
    return out


def _rows(held: dict, rows: np.ndarray) -> dict:
    return {k: v[rows] for k, v in held.items()}


# ---------------------------------------------------------------- rules fitted on some sources, applied to others
def _binding(sources: np.ndarray, fit: str) -> np.ndarray:
    """The groups a rule must hold in: each fitting source ("every_source"), or all of them as one ("pooled")."""
    return sources if fit == "every_source" else np.full(len(sources), "pooled")


class RuleFit:
    """Every reliability rule fitted on the `fit` rows (validation images of some sources) for one setting."""

    def __init__(self, ev: EvaluationImages, fit: np.ndarray, setting: dict, unusual: dict[str, np.ndarray]):
        labels, sources, probs = ev.labels[fit], ev.acquisition[fit], ev.probs[fit]
        errors = probs.argmax(1) != labels
        self.setting = setting
        self.triage = TriageRule(class_referral_thresholds(probs, labels, _binding(sources, setting["referral_fit"]),
                                                           MALIGNANT_CODES, setting["referral_target"]),
                                 setting["referral_target"],
                                 clear_threshold(probs[:, CLASS_INDEX[CLEAR_CLASS]], np.isin(labels, MALIGNANT_INDICES),
                                                 _binding(sources, setting["clear_fit"]), setting["clear_max_malignant"]),
                                 setting["clear_margin"])
        score = ev.uncertainty[setting["uncertainty_score"]][fit]
        low_cut = low_uncertainty_cut(score, errors, _binding(sources, setting["low_fit"]), setting["low_max_error"])
        high_cut = max(float(np.quantile(score, 1 - fit_rules.HIGH_SHARE)), low_cut)
        assigned = UncertaintyLevels(setting["uncertainty_score"], (low_cut, high_cut)).levels(score)
        self.levels = UncertaintyLevels(setting["uncertainty_score"], (low_cut, high_cut),
                                        {lvl: float(errors[assigned == lvl].mean()) for lvl in LEVELS
                                         if (assigned == lvl).any()})
        self.unusual_values = unusual
        self.unusual_threshold = float(np.quantile(unusual[setting["unusual_score"]][fit], fit_rules.OOD_UNUSUAL_QUANTILE))
        p_true = probs[np.arange(len(labels)), labels]
        self.sets = PredictionSets(conformal_quantile(p_true, sources, CONFORMAL_COVERAGE), CONFORMAL_COVERAGE)

    def apply(self, ev: EvaluationImages, rows: np.ndarray) -> dict:
        probs = ev.probs[rows]
        unc = self.levels.levels(ev.uncertainty[self.setting["uncertainty_score"]][rows])
        unusual = self.unusual_values[self.setting["unusual_score"]][rows] > self.unusual_threshold
        ood_levels = np.where(unusual, "unusual", "in")
        return {"verdicts": self.triage.levels(probs, unc, ood_levels), "unc": unc, "unusual": unusual,
                "sets": self.sets.members(probs), "mel_refer": probs[:, CLASS_INDEX["mel"]] >= self.triage.thresholds["mel"]}


def held_out_predictions(ev: EvaluationImages, setting: dict, sources: list[str], unusual_without) -> dict:
    """Each evaluation image judged by rules fitted without its source: arrays over all evaluation rows."""
    n = len(ev.labels)
    out = {"verdicts": np.empty(n, dtype=object), "unc": np.empty(n, dtype=object), "unusual": np.zeros(n, bool),
           "sets": np.zeros((n, NUM_CLASSES), bool), "mel_refer": np.zeros(n, bool)}
    for source in sources:
        fit = ev.is_val & (ev.acquisition != source)
        rows = ev.acquisition == source
        applied = RuleFit(ev, fit, setting, unusual_without(source)).apply(ev, rows)
        for key in out:
            out[key][rows] = applied[key]
    return out


def held_out_figures(ev: EvaluationImages, setting: dict, sources: list[str], unusual_without) -> tuple[dict, dict]:
    """The rule figures of one setting, its rules fitted without each source: (per held-out source, pooled)."""
    held = held_out_predictions(ev, setting, sources, unusual_without)
    rows = {}
    for s in sources:
        r = ev.acquisition == s
        rows[s] = rule_figures(ev.labels[r], ev.probs[r], ev.groups[r], _rows(held, r))
    return rows, rule_figures(ev.labels, ev.probs, ev.groups, held)


def choose_referral(ev: EvaluationImages, sources: list[str], unusual_without, chosen: dict,
                    trials: list[dict]) -> dict:
    """Per way of fitting (REFERRAL_FITS), the smallest target whose worst held-out melanoma sensitivity reaches
    MIN_HELD_OUT_SENSITIVITY; of those, the most specific (pooled benign specificity); none reaching it: the most
    sensitive tried."""
    reached, tried = [], []
    for fit in REFERRAL_FITS:
        for target in REFERRAL_TARGETS:
            setting = {**chosen, "referral_target": target, "referral_fit": fit}
            rows, pooled = held_out_figures(ev, setting, sources, unusual_without)
            worst = min(r["refer"]["melanoma_sensitivity"]["value"] for r in rows.values()
                        if r["refer"]["melanoma_sensitivity"]["value"] is not None)
            specificity = pooled["refer"]["benign_specificity"]
            trials.append({"setting": setting, "worst_melanoma_sensitivity": worst,
                           "pooled_benign_specificity": specificity})
            tried.append((worst, specificity, setting))
            if worst >= MIN_HELD_OUT_SENSITIVITY:
                reached.append((specificity, worst, setting))
                break
    return max(reached, key=lambda t: t[:2])[2] if reached else max(tried, key=lambda t: t[:2])[2]


def _best_setting(ev: EvaluationImages, sources: list[str], unusual_without, settings, judge,
                  trials: list[dict]) -> dict:
    """Each setting's rules fitted without each source and scored on it; `judge(setting, per_source, pooled)` gives
    (key, trial entry). The setting with the largest key."""
    best = None
    for setting in settings:
        rows, pooled = held_out_figures(ev, setting, sources, unusual_without)
        key, trial = judge(setting, rows, pooled)
        trials.append(trial)
        if best is None or key > best[0]:
            best = (key, setting)
    return best[1]


def choose_uncertainty(ev: EvaluationImages, sources: list[str], unusual_without, chosen: dict,
                       trials: list[dict]) -> dict:
    """The uncertainty score, error bound and way of fitting it whose "low" level errs <= HELD_OUT_LOW_MAX_ERROR
    pooled and on every held-out source with >= MIN_LOW_IMAGES low images, with the largest pooled share (none: the
    smallest pooled error)."""
    scores = [name for name in UNCERTAINTY_SCORES if name in ev.uncertainty]  # a one-view rule has no TTA score

    def judge(setting, rows, pooled):
        errors = [r["uncertainty"]["low"]["error_rate"] for r in rows.values()
                  if r["uncertainty"]["low"]["images"] >= MIN_LOW_IMAGES]
        low = pooled["uncertainty"]["low"]
        ok = (low["error_rate"] is not None and low["error_rate"] <= HELD_OUT_LOW_MAX_ERROR
              and all(e <= HELD_OUT_LOW_MAX_ERROR for e in errors))
        return (ok, low["share"] if ok else -(low["error_rate"] or 1)), {
            "setting": setting, "worst_low_error": max(errors) if errors else None,
            "pooled_low_error": low["error_rate"], "pooled_low_share": low["share"],
            "low_share_per_source": {s: r["uncertainty"]["low"]["share"] for s, r in rows.items()}}

    settings = ({**chosen, "uncertainty_score": score, "low_max_error": bound, "low_fit": fit}
                for score, bound, fit in product(scores, LOW_ERROR_TARGETS, LOW_FITS))
    return _best_setting(ev, sources, unusual_without, settings, judge, trials)


def choose_unusual(ev: EvaluationImages, sources: list[str], unusual_without, chosen: dict,
                   trials: list[dict]) -> dict:
    """The unusual score with the largest pooled error ratio (flagged images' error rate over the rest's)."""
    ratios = {}
    for name in UNUSUAL_CANDIDATES:
        setting = {**chosen, "unusual_score": name}
        _, pooled = held_out_figures(ev, setting, sources, unusual_without)
        ratios[name] = pooled["unusual"]["error_ratio"] or 0.0
        trials.append({"setting": setting, "pooled_unusual_error_ratio": ratios[name]})
    return {**chosen, "unusual_score": max(ratios, key=ratios.get)}


def choose_clear(ev: EvaluationImages, sources: list[str], unusual_without, chosen: dict,
                 trials: list[dict]) -> dict:
    """The clear-nevus setting (malignant share and way of fitting its threshold, margin below the referral
    thresholds) whose "no referral" verdicts on the held-out sources hold <= HELD_OUT_CLEAR_MAX_MALIGNANT malignant
    lesions pooled and clear <= HELD_OUT_CLEAR_MAX_MISSED of the malignant lesions of every source with
    >= MIN_MALIGNANT of them (the pooled figure is dominated by the largest sources; a clinic's own losses are what its
    patients bear), with the largest pooled share of lesions; none: the smallest worst-source loss."""
    def judge(setting, rows, pooled):
        cleared = pooled["no_referral"]
        missed = max((r["no_referral"]["malignant_cleared"] / r["no_referral"]["malignant_lesions"]
                      for r in rows.values() if r["no_referral"]["malignant_lesions"] >= MIN_MALIGNANT), default=0.0)
        ok = (cleared["malignant_share"] is not None and cleared["malignant_share"] <= HELD_OUT_CLEAR_MAX_MALIGNANT
              and missed <= HELD_OUT_CLEAR_MAX_MISSED)
        return (ok, cleared["share"] if ok else -missed), {
            "setting": setting, "pooled_no_referral_share": cleared["share"],
            "pooled_no_referral_malignant_share": cleared["malignant_share"],
            "worst_source_malignant_cleared": missed}

    settings = ({**chosen, "clear_max_malignant": target, "clear_fit": fit, "clear_margin": margin}
                for margin, target, fit in product(CLEAR_MARGINS, CLEAR_TARGETS, CLEAR_FITS))
    return _best_setting(ev, sources, unusual_without, settings, judge, trials)


def choose_setting(ev: EvaluationImages, sources: list[str], unusual_without) -> tuple[dict, list[dict]]:
    """Try each setting on held-out sources; keep the one the issue's criteria favour, one rule after the other:
    the referral thresholds (choose_referral), then the "low" uncertainty level (choose_uncertainty), then the
    unusual score (choose_unusual), then the clear-nevus threshold (choose_clear). Also every setting tried with its
    figures."""
    trials = []
    scores = [name for name in UNCERTAINTY_SCORES if name in ev.uncertainty]
    chosen = {"referral_target": REFERRAL_TARGETS[0], "referral_fit": REFERRAL_FITS[0],
              "low_max_error": LOW_ERROR_TARGETS[-1],
              "low_fit": LOW_FITS[0], "uncertainty_score": scores[0],
              "unusual_score": UNUSUAL_CANDIDATES[0],
              "clear_max_malignant": CLEAR_TARGETS[0], "clear_fit": CLEAR_FITS[0], "clear_margin": CLEAR_MARGINS[0]}
    for choose in (choose_referral, choose_uncertainty, choose_unusual, choose_clear):
        chosen = choose(ev, sources, unusual_without, chosen, trials)
    return chosen, trials


# ---------------------------------------------------------------- classifier heads, leave one source out
def criterion(probs, labels, sources) -> float:
    """Mean over sources of the balanced accuracy (each source counts once, whatever its size)."""
    return float(np.mean([balanced_accuracy(labels[sources == s], probs[sources == s].argmax(1))
                          for s in np.unique(sources)]))


def head_predictions(ev: EvaluationImages, tr: TrainingImages, sources: list[str]) -> dict[str, np.ndarray]:
    """Out-of-source probabilities of every recipe (and the mean of the two source-balanced heads) for every
    evaluation row: the head for a row's source never saw that source."""
    feats = {"pooled": np.concatenate([tr.pooled, ev.pooled]), "imagenet": np.concatenate([tr.imagenet, ev.imagenet])}
    labels = np.concatenate([tr.labels, ev.labels])
    acq = np.concatenate([tr.acquisition, ev.acquisition])
    is_train = np.r_[np.ones(len(tr.labels), bool), np.zeros(len(ev.labels), bool)]
    is_val = np.r_[np.zeros(len(tr.labels), bool), ev.is_val]
    n_eval = len(ev.labels)
    out = {name: np.zeros((n_eval, NUM_CLASSES)) for name in RECIPES}
    for source in sources:
        rows = np.flatnonzero(~is_train & (acq == source)) - len(tr.labels)
        for name, (feature, balanced) in RECIPES.items():
            head, temperature, _ = fit_recipe(feats[feature], labels, acq, is_train & (acq != source),
                                              is_val & (acq != source), balanced, criterion)
            out[name][rows] = softmax(head.logits(getattr(ev, feature)[rows]) / temperature)
    out["ensemble_source_balanced"] = (out["mask_cn_head_source_balanced"] + out["imagenet_head_source_balanced"]) / 2
    return out


def similar_case_agreement(ev: EvaluationImages, tr: TrainingImages, sources: list[str]) -> dict:
    """Share of the NEIGHBOURS nearest training images (of the other sources) that share the query's true diagnosis,
    for mask-CN's features and for the ImageNet features, per held-out source and pooled."""
    result = {}
    hits = {"mask_cn_features": np.zeros(len(ev.labels)), "imagenet_features": np.zeros(len(ev.labels))}
    for source in sources:
        rows, ref = ev.acquisition == source, tr.acquisition != source
        for name, key in (("mask_cn_features", "pooled"), ("imagenet_features", "imagenet")):
            q = torch.nn.functional.normalize(torch.as_tensor(getattr(ev, key)[rows], dtype=torch.float32), dim=1)
            r = torch.nn.functional.normalize(torch.as_tensor(getattr(tr, key)[ref], dtype=torch.float32), dim=1)
            top = torch.topk(q @ r.T, NEIGHBOURS, dim=1).indices.numpy()
            hits[name][rows] = (tr.labels[ref][top] == ev.labels[rows][:, None]).mean(1)
        result[source] = {name: float(h[rows].mean()) for name, h in hits.items()}
    result["pooled"] = {name: value_with_ci(lambda i, h=h: h[i].mean(), len(h), ev.groups) for name, h in hits.items()}
    return result


# ---------------------------------------------------------------- the step's parts
def per_source_figures(ev: EvaluationImages, probs: np.ndarray, sources: list[str]) -> dict:
    """classification_figures of `probs` on each source's evaluation images."""
    return {s: classification_figures(ev.labels[r], probs[r], ev.groups[r]) for s in sources
            for r in [ev.acquisition == s]}


def held_out_rule_figures(ev: EvaluationImages, held: dict, sources: list[str]) -> tuple[dict, dict]:
    """rule_figures of the held-out predictions, per source and pooled."""
    per_source = {s: rule_figures(ev.labels[r], ev.probs[r], ev.groups[r], _rows(held, r)) for s in sources
                  for r in [ev.acquisition == s]}
    return per_source, rule_figures(ev.labels, ev.probs, ev.groups, held)


def skin_tone_figures(evaluation: pd.DataFrame, train: pd.DataFrame, ev: EvaluationImages,
                      held: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """Per ITA skin-tone group: how many evaluation and training images it has and, from 20 evaluation images on, the
    shipped classifier's and the held-out rules' figures; also each evaluation image's ITA group and angle."""
    ita = skin_tones(evaluation)
    groups_ita = np.array([ita_group(a) for a in ita])
    train_ita = np.array([ita_group(a) for a in skin_tones(train)])
    skin = {"groups": [g for g, _ in ITA_GROUPS] + ["unknown"], "per_group": {}}
    for g in skin["groups"]:
        r = groups_ita == g
        entry = {"images_evaluation": int(r.sum()), "images_training": int((train_ita == g).sum())}
        if r.sum() >= 20:
            entry.update(classification_figures(ev.labels[r], ev.probs[r], ev.groups[r]))
            entry["held_out_rules"] = rule_figures(ev.labels[r], ev.probs[r], ev.groups[r], _rows(held, r))
        skin["per_group"][g] = entry
    return skin, groups_ita, ita


def clear_score_ranking(ev: EvaluationImages, held: dict) -> dict:
    """Why the clear rule reads the nevus probability: among the lesions the held-out rules did not refer, how well
    each candidate score ranks the malignant ones (AUC, lesion-bootstrap CI; higher score = more likely malignant)."""
    rows = ~np.isin(held["verdicts"], ("refer", "not_assessed"))
    malignant = np.isin(ev.labels, MALIGNANT_INDICES)[rows]
    probs, groups = ev.probs[rows], ev.groups[rows]
    scores = {"one_minus_nevus_probability": 1 - probs[:, CLASS_INDEX[CLEAR_CLASS]],
              "malignant_probability": melanoma_score(probs, "malignant")}
    return {"images": int(rows.sum()), "malignant": int(malignant.sum()),
            **{name: value_with_ci(lambda i, v=v: binary_auc(malignant[i], v[i]), len(v), groups)
               for name, v in scores.items()}}


def validation_melanomas(ev: EvaluationImages, sources: list[str]) -> dict[str, int]:
    return {s: int((ev.is_val & (ev.acquisition == s) & (ev.labels == CLASS_INDEX["mel"])).sum()) for s in sources}


# ---------------------------------------------------------------- the step
def out_of_source(data_dir: Path, weights: Path, card: dict, split: Split, out: Path, max_images: int = 0) -> dict:
    """The rules fitted across sources and their held-out figures, as card sections; `card`: the sections of the
    earlier steps (the decision rule, the retrieval index size, the OOD thresholds and test figures)."""
    started = time.time()
    evaluation, outputs, train, train_out = evaluation_data(data_dir, weights, split, max_images)
    ev, tr = evaluation_images(evaluation, outputs, card), training_images(train, train_out)
    sources = [s for s in SOURCE_NAMES if (ev.acquisition == s).any()]
    shipped_ood = {k: v.float() for k, v in load_file(str(weights / OOD_FILE)).items()}
    unusual_without = UnusualDistances(ev, tr, train, shipped_ood, card)

    # 1. the shipped classifier per source
    per_source = per_source_figures(ev, ev.probs, sources)
    # 2. heads on frozen features, leave one source out
    heads = head_predictions(ev, tr, sources)
    recipes = {name: per_source_figures(ev, p, sources) for name, p in heads.items()}
    # 3. rules, leave one source out (settings chosen on these held-out figures)
    setting, trials = choose_setting(ev, sources, unusual_without)
    held = held_out_predictions(ev, setting, sources, unusual_without)
    rules_per_source, rules_pooled = held_out_rule_figures(ev, held, sources)
    # 4. the shipped rules: fitted on every source's validation images
    final = RuleFit(ev, ev.is_val, setting, unusual_without(None))
    # skin tone and similar cases
    skin, groups_ita, ita = skin_tone_figures(evaluation, train, ev, held)
    similar = similar_case_agreement(ev, tr, sources)

    sections = rule_sections(card, final, setting, trials, per_source, recipes, rules_per_source, rules_pooled, skin,
                             similar, validation_melanomas(ev, sources), time.time() - started)
    sections["out_of_source"]["clear_score_auc"] = clear_score_ranking(ev, held)
    write_predictions(out, evaluation, ev, heads, held, groups_ita, ita)
    sections["metrics"], sections["ood"] = refresh_test_figures(weights, card, sections["ood"], evaluation, ev, final)
    print_summary(sections)
    return sections


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--weights", default="weights")
    parser.add_argument("--out", default="runs/oos", help="folder for predictions.csv (every evaluation image)")
    parser.add_argument("--split-file", default="", help="default: the split of the card in WEIGHTS")
    parser.add_argument("--max-images", type=int, default=0, help=">0: at most this many images per class, source "
                                                                  "and split (tests)")
    parser.add_argument("--measures", default="runs/image_quality",
                        help="calibration.fit_image_quality's measures (for the test predictions' triage column)")
    args = parser.parse_args(argv)
    weights = Path(args.weights)
    card = read_card_json(weights)
    sections = out_of_source(Path(args.data_dir), weights, card, Split.of_args(args.split_file, weights),
                             Path(args.out), args.max_images)
    write_triage_column(weights, write_sections(weights, sections), Path(args.measures))
    return sections


def rule_sections(card, final, setting, trials, per_source, recipes, rules_per_source, rules_pooled, skin,
                  similar, val_melanomas, seconds) -> dict:
    """The card sections of the shipped rules (fitted on every source's validation images) with their held-out
    figures, and the `out_of_source` section."""
    sections = {}
    sources = list(per_source)
    pooled = rules_pooled
    final.triage = TriageRule(final.triage.thresholds, final.triage.target_sensitivity, final.triage.clear_threshold,
                              final.triage.clear_margin,
                              {"refer": {k: (v["value"] if isinstance(v, dict) else v)
                                         for k, v in pooled["refer"].items()},
                               "review": pooled["review"],
                               "no_referral": {**pooled["no_referral"],
                                               "malignant_share_range": _cleared_malignant_range(rules_per_source)},
                               "sources": sources})
    sections["triage"] = {**final.triage.to_card(), "clear_fit": {
        "rule": (f"smallest nevus probability at or above which <= {setting['clear_max_malignant']:.1%} of the "
                 + ("validation images of every source" if setting["clear_fit"] == "every_source" else
                    "pooled validation images") + " were malignant, every malignant class below "
                 f"{setting['clear_margin']:.0%} of its referral threshold (calibration.out_of_source); chosen as the "
                 f"setting whose held-out 'no referral' verdicts were <= {HELD_OUT_CLEAR_MAX_MALIGNANT:.0%} malignant "
                 f"and cleared <= {HELD_OUT_CLEAR_MAX_MISSED:.0%} of any held-out source's malignant lesions "
                 f"(sources with >= {MIN_MALIGNANT}), with the largest share of lesions")}}
    mel = ReferralRule("mel", final.triage.thresholds["mel"], setting["referral_target"])
    sections["referral"] = {**mel.to_card(), "score_meaning": "probability of melanoma",
                        "fit": {"rule": f"largest threshold with melanoma sensitivity >= {setting['referral_target']} "
                                        + ("in every source's" if setting["referral_fit"] == "every_source" else
                                           "on the pooled") + " validation images (calibration.out_of_source)",
                                "validation_melanomas_per_source": val_melanomas,
                                "min_melanomas_to_bind": MIN_POSITIVES if setting["referral_fit"] == "every_source"
                                else None},
                        "out_of_source": {"melanoma_sensitivity": pooled["refer"]["melanoma_sensitivity"],
                                          "benign_specificity": pooled["refer"]["benign_specificity"]}}
    levels = final.levels
    held_rates = {lvl: pooled["uncertainty"][lvl]["error_rate"] for lvl in LEVELS}
    sections["uncertainty"] = {**levels.to_card(),
                           "out_of_source_error_rates": {k: v for k, v in held_rates.items() if v is not None},
                           "out_of_source_shares": {lvl: pooled["uncertainty"][lvl]["share"] for lvl in LEVELS},
                           "out_of_source_error_range": {
                               lvl: span for lvl in LEVELS if (span := _error_range(rules_per_source, lvl))},
                           "fit": {"rule": f"{levels.score}; low = the largest share whose top prediction errs <= "
                                           f"{setting['low_max_error']:.0%} "
                                           + ("in every source's" if setting["low_fit"] == "every_source" else "on the")
                                           + f" validation images, high = the {fit_rules.HIGH_SHARE:.0%} most "
                                             "uncertain validation images; validation error rates in error_rates"}}
    sections["ood"] = {**card["ood"], "unusual_score": setting["unusual_score"],
                       "thresholds": {**card["ood"]["thresholds"], "unusual": final.unusual_threshold},
                       "out_of_source": pooled["unusual"]}
    sections["conformal"] = {**final.sets.to_card(), "out_of_source": pooled["conformal"],
                         "out_of_source_coverage_per_source": {s: r["conformal"]["coverage"]
                                                               for s, r in rules_per_source.items()}}
    sections["out_of_source"] = {
        "protocol": ("leave one source out over the acquisition sources (HAM10000's four `dataset` values and ISIC "
                     "2017); evaluation images = each source's validation + test split images. Rules: fitted on the "
                     "other sources' validation images (referral thresholds and conformal quantile: the worst source binds), "
                     "scored on the held-out source, "
                     "the OOD model refitted without it. Classifier recipes: heads on frozen features fitted on the "
                     "other sources' training images (mask-CN's backbone saw every source's training images: "
                     "optimistic; the ImageNet backbone saw none)."),
        "sources": {s: SOURCE_NAMES[s] for s in sources},
        "setting": setting, "trials": trials,
        "shipped_per_source": per_source, "recipes_held_out": recipes,
        "rules_per_source": rules_per_source, "rules_pooled": rules_pooled,
        "skin_tone": skin, "similar_cases": similar, "seconds": round(seconds, 1)}
    return sections


def _cleared_malignant_range(rules_per_source: dict) -> list[float] | None:
    """[lowest, highest] malignant share among the lesions given "no referral", over the held-out sources with
    >= MIN_LOW_IMAGES such lesions (None when none has that many): the pooled figure is dominated by the largest
    sources, this says how far a single clinic strayed from it."""
    shares = [r["no_referral"]["malignant_share"] for r in rules_per_source.values()
              if r["no_referral"]["images"] >= MIN_LOW_IMAGES]
    return [min(shares), max(shares)] if shares else None


def _error_range(rules_per_source: dict, level: str) -> list[float] | None:
    """[lowest, highest] error rate of a level over the held-out sources with >= MIN_LOW_IMAGES images at it (all
    sources with any when none has that many; None when no source has any)."""
    rates = [r["uncertainty"][level]["error_rate"] for r in rules_per_source.values()
             if r["uncertainty"][level]["images"] >= MIN_LOW_IMAGES]
    rates = rates or [r["uncertainty"][level]["error_rate"] for r in rules_per_source.values()
                      if r["uncertainty"][level]["error_rate"] is not None]
    return [min(rates), max(rates)] if rates else None


def write_predictions(out: Path, evaluation: pd.DataFrame, ev: EvaluationImages, heads: dict, held: dict,
                      groups_ita: np.ndarray, ita: np.ndarray) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = evaluation[["image_id", "acquisition", "split", "dx", "lesion_id"]].rename(
        columns={"acquisition": "source", "dx": "label"})
    rows["pred_shipped"] = [CLASS_CODES[i] for i in ev.probs.argmax(1)]
    rows["pred_loso"] = [CLASS_CODES[i] for i in heads["ensemble_source_balanced"].argmax(1)]
    rows["triage_held_out"] = held["verdicts"]
    rows["uncertainty_held_out"] = held["unc"]
    rows["unusual_held_out"] = held["unusual"]
    rows["ita"] = np.round(ita, 1)
    rows["ita_group"] = groups_ita
    rows.to_csv(out / "predictions.csv", index=False)


def refresh_test_figures(weights: Path, card: dict, ood: dict, evaluation: pd.DataFrame, ev: EvaluationImages,
                         final: RuleFit) -> tuple[dict, dict]:
    """Under the new shipped rules (probabilities unchanged): the rule columns of test_predictions.csv (refer,
    uncertainty, ood_level), and the card's `metrics` and `ood` sections with the test-set referral, uncertainty and
    unusual-flag figures of these rules, so that every page that reads them describes the rules the app applies."""
    path = weights / "test_predictions.csv"
    table = pd.read_csv(path, keep_default_na=False)
    index = {image_id: i for i, image_id in enumerate(evaluation["image_id"])}
    rows = np.array([index[i] for i in table["image_id"]])
    applied = final.apply(ev, rows)
    ood_levels = table["ood_level"].astype(str).to_numpy()
    refused = np.isin(ood_levels, REFUSED_LEVELS)
    table["ood_level"] = np.where(refused, ood_levels, np.where(applied["unusual"], "unusual", "in"))
    unc_score = ev.uncertainty[final.levels.score][rows]
    table["uncertainty_score"] = unc_score.round(5)
    table["uncertainty_level"] = final.levels.levels(unc_score)
    table["mel_score"] = ev.probs[rows, CLASS_INDEX["mel"]].round(5)  # the score of the referral written below
    table["refer"] = np.where(applied["mel_refer"], "yes", "no")
    table.to_csv(path, index=False)

    referral = ReferralRule("mel", final.triage.thresholds["mel"], final.triage.target_sensitivity)
    metrics = {name: dict(entry) for name, entry in card["metrics"].items()}
    results = {name: dict(entry) for name, entry in ood["results"].items()}
    for name, source in (("ham10000_test", "ham10000"), ("isic2017_test", "isic2017")):
        chosen = np.flatnonzero((evaluation["split"] == "test") & (evaluation["source"] == source))
        if not len(chosen) or name not in metrics:
            continue
        part, probs = evaluation.iloc[chosen], ev.probs[chosen]
        score = ev.uncertainty[final.levels.score][chosen]
        metrics[name]["referral"] = referral_report(part, probs, referral)
        metrics[name]["uncertainty"] = uncertainty_report(part, probs, score, final.levels)
        unusual = final.apply(ev, chosen)["unusual"]
        wrong = probs.argmax(1) != ev.labels[chosen]
        results[name].update(
            unusual_share=float(unusual.mean()),
            error_rate_unusual=float(wrong[unusual].mean()) if unusual.any() else None,
            error_rate_in=float(wrong[~unusual].mean()) if (~unusual).any() else None)
    return metrics, {**ood, "results": results}


def print_summary(card: dict) -> None:
    oos = card["out_of_source"]
    print(f"setting chosen on held-out sources: {oos['setting']}")
    print("\nshipped classifier per source (evaluation images):")
    for s, f in oos["shipped_per_source"].items():
        print(f"  {s:14s} n={f['n']:5d} mel={f['melanomas']:4d}  mel AUC {format_with_ci(f['melanoma_auc'])}  "
              f"BA {format_with_ci(f['balanced_accuracy'])}")
    print("\nheads on frozen features, leave one source out (mel AUC / BA):")
    for name, per in oos["recipes_held_out"].items():
        print(f"  {name:32s} " + "  ".join(
            f"{s}: {format_with_ci(f['melanoma_auc'], 2)}/{format_with_ci(f['balanced_accuracy'], 2)}"
            for s, f in per.items()))
    print("\nrules fitted without the source, per held-out source:")
    for s, f in {**oos["rules_per_source"], "pooled": oos["rules_pooled"]}.items():
        u, r = f["uncertainty"]["low"], f["refer"]
        print(f"  {s:14s} refer mel sens {format_with_ci(r['melanoma_sensitivity'])} "
              f"malignant {_num(r['malignant_sensitivity'])} "
              f"benign spec {_num(r['benign_specificity'])} | low share {u['share']:.2f} err {_num(u['error_rate'])} | "
              f"unusual x{_num(f['unusual']['error_ratio'])} | set coverage {f['conformal']['coverage']:.3f} "
              f"size {f['conformal']['mean_set_size']:.2f} | no referral {f['no_referral']['share']:.3f} "
              f"malignant {_num(f['no_referral']['malignant_share'])}")
    ranking = oos["clear_score_auc"]
    print(f"\namong the {ranking['images']} lesions not referred ({ranking['malignant']} malignant), AUC for malignant: "
          + ", ".join(f"{k} {format_with_ci(v)}" for k, v in ranking.items() if isinstance(v, dict)))
    print("\nskin tone (ITA group: evaluation / training images, BA):")
    for g, f in oos["skin_tone"]["per_group"].items():
        print(f"  {g:13s} {f['images_evaluation']:5d} / {f['images_training']:5d}  "
              f"{format_with_ci(f.get('balanced_accuracy')) if f.get('balanced_accuracy') else '-'}")
    print(f"\nsimilar cases, pooled share of {NEIGHBOURS} neighbours with the true diagnosis: "
          + ", ".join(f"{k} {format_with_ci(v)}" for k, v in oos["similar_cases"]["pooled"].items()))


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    main()
