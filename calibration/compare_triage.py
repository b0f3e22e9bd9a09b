"""Compare whole models by what their verdict does at clinics they were not fitted on, without rebuilding the card.

    python -m calibration.compare_triage --data-dir ../shared/data \
        --candidate shipped=weights --candidate lite1=runs/weights_v3 --candidate both=weights+runs/weights_v3 \
        --candidate balanced=runs/mcn_source_balanced/best.safetensors

A candidate is a weights folder with its model card (the networks and the decision rule calibration.evaluate fitted
for them), or a mask-CN weight file (a training run's best.safetensors) on the segmenters of --weights, its decision
rule fitted on validation as calibration.evaluate fits it, or `a+b` of those: the mean of their probabilities, each
under its own decision rule. Every candidate goes through the card's own out-of-source rule protocol
(calibration.out_of_source, steps 3 and 4): each rule fitted on the validation images of every source but S and
applied to S's evaluation images, its settings chosen on those held-out figures. Reported, pooled and per held-out
source: melanoma and all-malignant sensitivity of "refer", benign lesions not referred, the share of "no referral"
with the malignant lesions among it, and the benign lesions at or above melanoma's threshold alone (how much of the
referral of benign lesions melanoma's threshold makes). Each candidate's difference to the first is bootstrapped on
the same resampled lesions (a paired CI), so a lever counts only where that interval excludes 0. Writes --out (JSON)
and prints a table.

This is the criterion that decides whether a retrained classifier ships (the card's held-out triage figures), in
about a minute per candidate once train.network_outputs has cached its networks' outputs, against ~85 minutes for the
card's full rebuild; a candidate that wins here still ships only through that rebuild
(python -m calibration.calibrate --config calibration/presets/shipped.toml).

--acral adds the acral images' contributors (core.data.acquisition: Imperial, IDS, the small ones together) as held-out
sources of their own, which the card's protocol does not yet do: the rules must then also hold at an acral clinic.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import load_file

from core.analysis.inference import OOD_FILE
from core.analysis.metrics import format_with_ci, value_with_ci
from core.data.acquisition import SOURCE_NAMES
from core.data.classes import CLASS_INDEX, MALIGNANT_INDICES, NUM_CLASSES
from core.data.datasets import load_manifest
from core.decisions.decision_rule import DecisionRule
from core.decisions.model_card import read_card_json
from core.decisions.uncertainty import probability_scores
from core.imaging.tta import ALL_VIEWS
from train.network_outputs import split_outputs
from calibration import fit_rules, out_of_source as oos
from calibration.card_io import Split
from calibration.evaluate import CARD_SOURCES

ACRAL_SOURCES = ("acral_imperial", "acral_ids", "acral_other")
FIGURES = ("melanoma_sensitivity", "malignant_sensitivity", "benign_specificity", "no_referral_share",
           "no_referral_malignant_share", "benign_over_melanoma_threshold")


def parse_candidate(spec: str) -> tuple[str, list[Path]]:
    """"name=member[+member...]" -> (name, members); a member is a weights folder or a mask-CN .safetensors file."""
    name, sep, members = spec.partition("=")
    if not sep or not name or not members:
        raise argparse.ArgumentTypeError(f"--candidate takes name=member[+member], got {spec!r}")
    return name, [Path(m) for m in members.split("+")]


def _acral_rows(data_dir: Path, weights: Path, split: Split, max_images: int, mask_cn: Path | None
                ) -> tuple[pd.DataFrame, dict, pd.DataFrame, dict]:
    """The acral images as calibration.out_of_source.evaluation_data gives the others, each row's source its
    contributor."""
    acral = split.apply(load_manifest(data_dir, sources=("acral",)))
    if max_images:
        acral = pd.concat([g.sample(n=min(max_images, len(g)), random_state=0)
                           for _, g in acral.groupby(["split", "dx"])])
    acral = acral.reset_index(drop=True)
    oos.add_sources(acral, data_dir, acral_contributors=True)
    nets = oos.load_networks(weights, mask_cn)
    evaluation = acral[acral["split"] != "train"].reset_index(drop=True)
    train = acral[acral["split"] == "train"].reset_index(drop=True)
    return (evaluation, split_outputs(nets, evaluation, segmentation=False, views=ALL_VIEWS),
            train, split_outputs(nets, train, segmentation=False, views=(0,)))


def _joined(parts: list[tuple[pd.DataFrame, dict]]) -> tuple[pd.DataFrame, dict]:
    table = pd.concat([t for t, _ in parts], ignore_index=True)
    keys = parts[0][1].keys()
    return table, {k: np.concatenate([o[k] for _, o in parts], axis=1 if k == "logits" else 0) for k in keys}


def member_data(data_dir: Path, weights: Path, mask_cn: Path | None, split: Split, max_images: int, acral: bool):
    """(evaluation table, outputs, training table, outputs) of the networks of WEIGHTS (mask-CN: `mask_cn` when
    given), acral rows appended with --acral."""
    evaluation, outputs, train, train_out = oos.evaluation_data(data_dir, weights, split, max_images, mask_cn)
    if not acral:
        return evaluation, outputs, train, train_out
    a_eval, a_out, a_train, a_train_out = _acral_rows(data_dir, weights, split, max_images, mask_cn)
    evaluation, outputs = _joined([(evaluation, outputs), (a_eval, a_out)])
    train, train_out = _joined([(train, train_out), (a_train, a_train_out)])
    return evaluation, outputs, train, train_out


def mean_probabilities(logits: list[np.ndarray], rules: list[DecisionRule]) -> tuple[np.ndarray, np.ndarray]:
    """Each folder's (8, N, C) logits under its own decision rule -> the mean (N, C) probabilities and the mean
    per-view probabilities (V, N, C) over the views every rule averages (the test-time-view uncertainty score)."""
    views = min(rule.views for rule in rules)
    probs = np.mean([rule.probabilities(x) for x, rule in zip(logits, rules)], axis=0)
    per_view = np.mean([np.stack([rule.single_view().probabilities(v[None]) for v in x[:views]])
                        for x, rule in zip(logits, rules)], axis=0)
    return probs, per_view


def card_rule(card: dict) -> DecisionRule:
    entry = card["decision_rule"]
    return DecisionRule(int(entry["views"]), float(entry["temperature"]), tuple(entry["logit_offsets"]))


def fitted_rule(evaluation: pd.DataFrame, logits: np.ndarray, train: pd.DataFrame, form: str = "fitted"
                ) -> DecisionRule:
    """The decision rule calibration.evaluate would fit for these logits: on the validation images of the card's
    datasets, class priors from their training images ("fitted": views, logit adjustment and temperature chosen as
    evaluate chooses them; "plain": the shipped rule's form, every view and no logit adjustment, only the temperature
    fitted, so that a candidate differs from the shipped model by its network alone)."""
    val = ((evaluation["split"] == "val") & evaluation["source"].isin(CARD_SOURCES)).to_numpy()
    labels = np.array([CLASS_INDEX[c] for c in evaluation["dx"]])
    if form == "plain":
        offsets = np.zeros(NUM_CLASSES)
        return DecisionRule(len(logits), fit_rules.fit_temperature(logits[:, val], labels[val], offsets),
                            tuple(float(o) for o in offsets))
    train_labels = np.array([CLASS_INDEX[c] for c in train.loc[train["source"].isin(CARD_SOURCES), "dx"]])
    priors = (np.bincount(train_labels, minlength=NUM_CLASSES) + 1) / (len(train_labels) + NUM_CLASSES)
    rule, _ = fit_rules.fit_decision_rule(logits[:, val], labels[val], evaluation["source"].to_numpy()[val], priors)
    return rule


def candidate_verdicts(members: list[Path], weights: Path, data_dir: Path, split: Split, max_images: int,
                       acral: bool, rule_form: str = "fitted", resamples: int = 1000) -> dict:
    """The candidate's held-out verdicts: rules fitted without each source, applied to it (the first member's
    features, and the OOD model and card of its folder, serve the unusual flag and the similar-case settings)."""
    folders = [weights if m.suffix == ".safetensors" else m for m in members]
    data = [member_data(data_dir, f, m if m.suffix == ".safetensors" else None, split, max_images, acral)
            for f, m in zip(folders, members)]
    ids = data[0][0]["image_id"].tolist()
    if any(d[0]["image_id"].tolist() != ids for d in data[1:]):
        raise ValueError("the members' evaluation images differ; compare them under one split (--split-file)")
    cards = [read_card_json(f) for f in folders]
    rules = [fitted_rule(d[0], d[1]["logits"], d[2], rule_form) if m.suffix == ".safetensors" else card_rule(card)
             for d, m, card in zip(data, members, cards)]
    evaluation, outputs, train, train_out = data[0]
    probs, per_view = mean_probabilities([d[1]["logits"] for d in data], rules)
    ev = replace(oos.evaluation_images(evaluation, outputs, cards[0]), probs=probs,
                 uncertainty=probability_scores(probs, per_view if len(per_view) > 1 else None))
    tr = oos.training_images(train, train_out)
    names = list(SOURCE_NAMES) + list(ACRAL_SOURCES)
    sources = [s for s in names if (ev.acquisition == s).any()]
    ood = {k: v.float() for k, v in load_file(str(folders[0] / OOD_FILE)).items()}
    unusual = oos.UnusualDistances(ev, tr, train, ood, cards[0])
    setting, _ = oos.choose_setting(ev, sources, unusual)
    held = oos.held_out_predictions(ev, setting, sources, unusual)
    return {"ev": ev, "held": held, "setting": setting, "rules": [asdict(r) for r in rules],
            "per_source": {s: _figures(ev, held, ev.acquisition == s, resamples) for s in sources},
            "pooled": _figures(ev, held, np.ones(len(ev.labels), bool), resamples)}


def _statistics(ev, held: dict) -> dict:
    """Each FIGURES entry as a function of row indices (for the bootstrap)."""
    refer, cleared = held["verdicts"] == "refer", held["verdicts"] == "no_referral"
    over_mel = held["mel_refer"]  # melanoma's threshold alone: which rule refers the benign lesions
    mel = ev.labels == CLASS_INDEX["mel"]
    malignant = np.isin(ev.labels, MALIGNANT_INDICES)

    def share(hit, among):
        return lambda i: float(hit[i][among[i]].mean()) if among[i].any() else None

    everything = np.ones(len(ev.labels), bool)
    return {"melanoma_sensitivity": share(refer, mel), "malignant_sensitivity": share(refer, malignant),
            "benign_specificity": share(~refer, ~malignant), "no_referral_share": share(cleared, everything),
            "no_referral_malignant_share": share(malignant, cleared),
            "benign_over_melanoma_threshold": share(over_mel, ~malignant)}


def _figures(ev, held: dict, rows: np.ndarray, resamples: int = 1000) -> dict:
    index = np.flatnonzero(rows)
    stats = _statistics(ev, held)
    return {name: value_with_ci(lambda i, f=f: f(index[i]), len(index), ev.groups[index], resamples)
            for name, f in stats.items()} | {"images": int(len(index))}


def paired_differences(ev, held: dict, baseline: dict, resamples: int = 1000) -> dict:
    """Each FIGURES entry of `held` minus the same of `baseline` (verdicts over the same rows), lesion-bootstrapped."""
    mine, theirs = _statistics(ev, held), _statistics(ev, baseline)

    def difference(name):
        def statistic(i):
            a, b = mine[name](i), theirs[name](i)
            return None if a is None or b is None else a - b
        return statistic

    return {name: value_with_ci(difference(name), len(ev.labels), ev.groups, resamples) for name in FIGURES}


def compare(candidates: list[tuple[str, list[Path]]], weights: Path, data_dir: Path, split: Split,
            max_images: int = 0, acral: bool = False, resamples: int = 1000, rule_form: str = "fitted") -> dict:
    result, first = {}, None
    for name, members in candidates:
        verdicts = candidate_verdicts(members, weights, data_dir, split, max_images, acral, rule_form, resamples)
        entry = {"members": [str(m) for m in members], "decision_rules": verdicts["rules"],
                 "setting": verdicts["setting"],
                 "pooled": verdicts["pooled"], "per_source": verdicts["per_source"]}
        if first is None:
            first = (name, verdicts)
        else:
            if not np.array_equal(first[1]["ev"].labels, verdicts["ev"].labels):
                raise ValueError(f"{name} was scored on other images than {first[0]}")
            entry[f"difference_to_{first[0]}"] = paired_differences(verdicts["ev"], verdicts["held"],
                                                                     first[1]["held"], resamples)
        result[name] = entry
    return result


def print_table(result: dict) -> None:
    names = list(result)
    print("| held out, pooled | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for figure in FIGURES:
        print(f"| {figure} | " + " | ".join(format_with_ci(result[n]["pooled"][figure]) for n in names) + " |")
    for name in names[1:]:
        diff = result[name][f"difference_to_{names[0]}"]
        print(f"| {name} - {names[0]} | " + "; ".join(f"{f} {format_with_ci(diff[f])}" for f in FIGURES) + " |")
    for name in names:
        print(f"{name}: benign specificity per held-out source " + ", ".join(
            f"{s} {v['benign_specificity']['value']:.2f}" for s, v in result[name]["per_source"].items()
            if v["benign_specificity"]["value"] is not None))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--candidate", type=parse_candidate, action="append", required=True,
                        help="name=member or name=member+member (mean of their probabilities), a member being a "
                             "weights folder or a mask-CN .safetensors file; the first candidate is the baseline")
    parser.add_argument("--weights", default="weights", help="the segmenters, OOD model and card a mask-CN file "
                                                              "member runs with, and the default split")
    parser.add_argument("--split-file", default="", help="default: the split of the card in --weights")
    parser.add_argument("--acral", action="store_true", help="the acral contributors as held-out sources too")
    parser.add_argument("--max-images", type=int, default=0, help=">0: at most this many images per class, source "
                                                                  "and split (tests)")
    parser.add_argument("--rule", choices=("fitted", "plain"), default="fitted",
                        help="a mask-CN file's decision rule: as calibration.evaluate fits it, or the shipped rule's "
                             "form (8 views, no logit adjustment, temperature fitted)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", default="runs/compare_triage.json")
    args = parser.parse_args(argv)
    split = Split.of_args(args.split_file, Path(args.weights))
    result = compare(args.candidate, Path(args.weights), Path(args.data_dir), split, args.max_images, args.acral,
                     args.resamples, args.rule)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print_table(result)
    return result


if __name__ == "__main__":
    main()
