"""The shipped model card as Markdown tables (values with bootstrap 95 % CIs): docs/results.md and README's headline.

    python -m calibration.summarize [--weights weights]                 # print the tables
    python -m calibration.summarize --out docs/results.md               # regenerate the results page
    python -m calibration.summarize --headline                          # print README's headline table
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.decisions.referral import validation_sources_text
from core.decisions.model_card import read_card_json

TEST_SETS = {"ham10000_test": "HAM10000 test", "isic2017_test": "ISIC 2017 val (official)"}
MODELS = {"classifier": "image-only classifier", "mask_cn_single_view": "mask-CN, no TTA",
          "mask_cn": "mask-CN + TTA (shipped)", "ensemble": "mask-CN + image-only (mean)",
          "mask_cn_context": "mask-CN + TTA + patient-context head"}


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, dict) and "value" in value:
        if value["value"] is None:
            return "—"
        low, high = value["ci95"]
        return f"{value['value']:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{value['value']:.3f}"
    if value is None:
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def classification_table(card: dict) -> str:
    rows = []
    for key, data in TEST_SETS.items():
        for model, m in card["metrics"][key]["classification"].items():
            ci = m["ci"]
            rows.append([data, MODELS.get(model, model), ci["balanced_accuracy"], ci["macro_auc"], ci.get("auc_mel"),
                         ci.get("auc_bkl"), m["accuracy"], m["calibration"]["before"]["ece"], m["calibration"]["after"]["ece"]])
    return _table(["data", "model", "balanced acc.", "macro AUC", "melanoma AUC", "bkl / SK AUC", "accuracy",
                   "ECE softmax", "ECE shown"], rows)


def per_class_table(card: dict) -> str:
    per_class = card["metrics"]["ham10000_test"]["classification"]["mask_cn"]["per_class"]
    rows = [[code, m["precision"], m["recall"], m["f1"], m["auc"], m["support"]] for code, m in per_class.items()]
    return _table(["class", "precision", "recall", "F1", "AUC", "support"], rows)


def segmentation_table(card: dict) -> str:
    rows = []
    for key, data in TEST_SETS.items():
        for model, seg in card["metrics"][key]["segmentation"].items():
            if model != "paired_differences":
                rows.append([data, model, seg["dice"], seg["jaccard"], seg["jaccard_thresholded_065"], seg["n"]])
        for name, diff in card["metrics"][key]["segmentation"]["paired_differences"].items():
            rows.append([data, name, "", diff, "", ""])
    return _table(["data", "network", "Dice", "Jaccard", "thresholded Jaccard (0.65)", "images"], rows)


def referral_table(card: dict) -> str:
    rows = []
    for key, data in TEST_SETS.items():
        for entry, inputs in (("referral", "image"), ("referral_with_context", "image + patient context")):
            r = card["metrics"][key].get(entry)
            if r is not None:
                rows.append([data, inputs, r["sensitivity"], r["specificity"], r["auc"], r["n_melanoma"]])
    return _table(["data", "inputs", "melanoma sensitivity", "specificity", "AUC of the score", "melanomas"], rows)


def uncertainty_table(card: dict) -> str:
    rows = []
    for key, data in TEST_SETS.items():
        for level, entry in card["metrics"][key]["uncertainty"]["levels"].items():
            rows.append([data, level, entry["share"], entry["error_rate"],
                         card["uncertainty"]["error_rates"].get(level)])
    return _table(["data", "level", "share of images", "top-1 error rate", "validation error rate"], rows)


def ood_table(card: dict) -> str:
    rows = []
    for name, entry in card["ood"]["results"].items():
        rows.append([name, entry.get("n", ""), entry["not_dermoscopy_share"], entry.get("unusual_share"),
                     entry.get("error_rate_unusual"), entry.get("error_rate_in")])
    return _table(["images", "n", "rejected as not dermoscopy", "flagged unusual", "error rate unusual",
                   "error rate in"], rows)


def retrieval_table(card: dict) -> str:
    rows = []
    for key, data in TEST_SETS.items():
        r = card["metrics"][key]["retrieval"]
        rows.append([data, r["precision_at_k"], r["knn_vote_balanced_accuracy"],
                     card["metrics"][key]["classification"]["mask_cn"]["balanced_accuracy"]])
    return _table([f"queries", f"precision@{card['retrieval']['k']}", "k-NN vote balanced acc.",
                   "classifier balanced acc."], rows)


def training_table(card: dict) -> str:
    times = card.get("training_time_minutes") or {}
    rows = [[stage, t["epochs"], f"{t['minutes']:.1f}", t["best_val_score"]] for stage, t in times.items()]
    return _table(["stage", "epochs", "CPU minutes", "best validation score"], rows)


def _share(value) -> str:
    if isinstance(value, dict) and "value" in value:
        low, high = value.get("ci95") or (None, None)
        return "—" if value["value"] is None else (
            f"{value['value']:.0%} [{low:.0%}, {high:.0%}]" if low is not None else f"{value['value']:.0%}")
    return "—" if value is None else f"{value:.0%}"


def out_of_source_tables(card: dict) -> str:
    """calibration.out_of_source's figures: the shipped classifier per acquisition source, the reliability statements on
    sources they were fitted without, the classifier recipes left one source out, and skin tone."""
    oos = card.get("out_of_source")
    if not oos:
        return "The card has no out-of-source figures (run `bash run.sh calibration.out_of_source`).\n"
    shipped = _table(["source", "images", "melanomas", "classes", "melanoma AUC", "balanced acc.", "macro AUC"],
                     [[s, f["n"], f["melanomas"], f["classes_present"], f["melanoma_auc"], f["balanced_accuracy"],
                       f["macro_auc"]] for s, f in oos["shipped_per_source"].items()])
    rules = _table(["held-out source", "melanomas referred", "malignant referred", "benign not referred",
                    "no referral: share", "no referral: malignant",
                    "'low': share", "'low': wrong", "unusual: error ratio", "90 % set coverage", "set size"],
                   [[s, _share(f["refer"]["melanoma_sensitivity"]), _share(f["refer"]["malignant_sensitivity"]),
                     _share(f["refer"]["benign_specificity"]), _share(f["no_referral"]["share"]),
                     "—" if f["no_referral"]["malignant_share"] is None else f"{f['no_referral']['malignant_share']:.1%}",
                     _share(f["uncertainty"]["low"]["share"]),
                     _share(f["uncertainty"]["low"]["error_rate"]),
                     "—" if f["unusual"]["error_ratio"] is None else f"x{f['unusual']['error_ratio']:.2f}",
                     _share(f["conformal"]["coverage"]), f["conformal"]["mean_set_size"]]
                    for s, f in {**oos["rules_per_source"], "pooled": oos["rules_pooled"]}.items()])
    sources = list(oos["sources"])
    recipes = _table(["recipe (melanoma AUC / balanced acc. on the held-out source)", *sources],
                     [[name, *[f"{per[s]['melanoma_auc']['value']:.2f} / {per[s]['balanced_accuracy']['value']:.2f}"
                               if s in per and per[s]["melanoma_auc"]["value"] is not None else "—" for s in sources]]
                      for name, per in oos["recipes_held_out"].items()])
    groups = (oos.get("skin_tone") or {}).get("per_group") or {}
    skin = _table(["ITA group", "evaluation images", "training images", "balanced acc.", "melanoma AUC"],
                  [[g, e["images_evaluation"], e["images_training"], e.get("balanced_accuracy", "too few"),
                    e.get("melanoma_auc", "too few")] for g, e in groups.items()])
    return (f"{oos['protocol']}\n\nThe shipped classifier per source (validation + test images)\n\n{shipped}\n\n"
            f"Reliability statements on the source they were fitted without (the screens quote the pooled row; "
            f"settings chosen on these figures: {oos['setting']})\n\n{rules}\n\n"
            f"Classifier recipes, leave one source out (heads on frozen features)\n\n{recipes}\n\n"
            f"By skin tone (individual typology angle of the skin around the lesion)\n\n{skin}\n")


def headline_table(card: dict) -> str:
    """README's one table: the shipped analysis on both test sets (nothing was chosen on them)."""
    rows = []
    for key, data in TEST_SETS.items():
        metrics = card["metrics"][key]
        ci = metrics["classification"]["mask_cn"]["ci"]
        referral = metrics["referral"]
        rows.append([data, ci["balanced_accuracy"], ci["macro_auc"], ci["auc_mel"],
                     f"{referral['sensitivity']['value']:.2f} / {referral['specificity']['value']:.2f}",
                     metrics["segmentation"]["enhanced_sn"]["jaccard"]])
    return _table(["test set", "balanced acc.", "macro AUC", "melanoma AUC",
                   f"referral (P(mel) >= {card['referral']['threshold']:.3f}) sensitivity / specificity",
                   "lesion Jaccard"], rows)


def results_page(card: dict) -> str:
    """Every table of the card, in the order docs/results.md shows them."""
    rule, referral, context = card["decision_rule"], card["referral"], card.get("patient_context", {})
    lines: list[str] = []
    add = lines.append
    add(f"Model card {card['version']} ({card['created']})\n")
    add("Classification (bootstrap 95 % CIs, lesions resampled)\n\n" + classification_table(card) + "\n")
    add("mask-CN per class, HAM10000 test\n\n" + per_class_table(card) + "\n")
    add("Segmentation and the E-layer ablation\n\n" + segmentation_table(card) + "\n")
    add(f"Melanoma referral: {referral['score_meaning']} >= {referral['threshold']:.3f} (validation sensitivity "
        f"target {referral['target_sensitivity']:.2f}{validation_sources_text(referral.get('fit') or {})})\n\n"
        + referral_table(card) + "\n")
    add(f"Uncertainty levels ({card['uncertainty']['score']})\n\n" + uncertainty_table(card) + "\n")
    add("Out-of-distribution\n\n" + ood_table(card) + "\n")
    add("Out of source: each acquisition source held out in turn ([out_of_source.md](out_of_source.md))\n\n"
        + out_of_source_tables(card))
    add("Similar cases\n\n" + retrieval_table(card) + "\n")
    add("Training (CPU)\n\n" + training_table(card) + "\n")
    add(f"Decision rule: {rule['views']} TTA view(s), temperature {rule['temperature']:.3f}, logit adjustment tau "
          f"{rule['fit']['chosen']['tau']:.2f}, validation criterion {rule['fit']['chosen']['criterion']:.4f}, validation "
          f"ECE {rule['fit']['chosen'].get('ece', float('nan')):.3f} (chosen on validation: {rule['fit']['rule']})")
    res = card.get("resolution_consistency", {})
    if res.get("n"):
        add(f"Resolution consistency: top class changes on {res['top_class_changed_share']:.1%} of {res['n']} "
              "full-resolution HAM10000 images against their 200x150 copies")
    if context:
        add(f"Patient context (validation criterion): image only {context['validation_criterion']['image_only']:.4f}, "
              f"image + context {context['validation_criterion']['image_and_context']:.4f}, gain {context['gain']:+.4f} "
              f"[{context['gain_ci95'][0]:+.4f}, {context['gain_ci95'][1]:+.4f}]; shipped: {context['shipped']}")
        if context.get("validation_log_loss"):
            loss = context["validation_log_loss"]
            add(f"Patient context (validation log-loss, out-of-fold): image only {loss['image_only']:.4f}, "
                  f"image + context {loss['image_and_context']:.4f}")
        if context.get("validation_ece"):
            ece = context["validation_ece"]
            add(f"Patient context (validation ECE, out-of-fold): image only {ece['image_only']:.3f}, image + context "
                  f"{ece['image_and_context']:.3f}; calibrated (<= the decision rule's bound): {context['calibrated']}")
    return "\n".join(lines) + "\n"


RESULTS_PAGE_HEADER = """# Results of the shipped models

Generated from `weights/model_card.json` by the last step of `python -m calibration.calibrate` (alone: `bash run.sh
calibration.summarize --out docs/results.md`; do not edit by hand; run it again whenever the card changes). Test sets: the lesion-grouped HAM10000 test split and the official ISIC 2017
validation set, on which nothing was chosen. What the figures mean and how they were obtained: [models.md](models.md).

"""


def write_results_page(card: dict, out: Path) -> None:
    """The results page of a card's JSON data (calibration.calibrate's last step)."""
    Path(out).write_text(RESULTS_PAGE_HEADER + results_page(card), encoding="utf-8")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="weights")
    parser.add_argument("--out", help="write the results page (e.g. docs/results.md) instead of printing the tables")
    parser.add_argument("--headline", action="store_true", help="print only README's headline table")
    args = parser.parse_args(argv)
    card = read_card_json(args.weights)
    if args.headline:
        print(headline_table(card))
    elif args.out:
        write_results_page(card, Path(args.out))
    else:
        print(results_page(card), end="")


if __name__ == "__main__":
    main()
