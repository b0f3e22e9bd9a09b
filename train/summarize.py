"""Print the shipped model card as Markdown tables (what the README's results section quotes).

    python -m train.summarize [--weights weights]
"""
from __future__ import annotations

import argparse

from core.weights_io import read_model_card


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def classification_table(card: dict) -> str:
    models = card["metrics"]["test"]["classification"]
    rows = []
    for key, name in (("classifier", "image-only classifier (baseline)"), ("mask_cn", "mask-CN (MB-DCNN)")):
        if key in models:
            m = models[key]
            rows.append([name, m["accuracy"], m["balanced_accuracy"], m["macro_auc"], m["top2_accuracy"],
                         m["calibration"]["before"]["ece"], m["calibration"]["after"]["ece"]])
    return _table(["model", "accuracy", "balanced acc.", "macro AUC", "top-2 acc.", "ECE before T", "ECE after T"], rows)


def per_class_table(card: dict) -> str:
    per_class = card["metrics"]["test"]["classification"]["mask_cn"]["per_class"]
    rows = [[code, m["precision"], m["recall"], m["f1"], m["auc"], m["support"]] for code, m in per_class.items()]
    return _table(["class", "precision", "recall", "F1", "AUC", "support"], rows)


def segmentation_table(card: dict) -> str:
    rows = []
    for dataset, key in (("HAM10000 test", "test"), ("ISIC 2017 val", "isic2017_val")):
        for model, seg in card["metrics"][key]["segmentation"].items():
            rows.append([dataset, model, seg["dice_mean"], seg["jaccard_mean"], seg["jaccard_thresholded_065"], seg["n"]])
    return _table(["data", "network", "Dice", "Jaccard", "thresholded Jaccard (0.65)", "images"], rows)


def training_table(card: dict) -> str:
    times = card.get("training_time_minutes") or {}
    rows = [[stage, t["epochs"], f"{t['minutes']:.1f}", t["best_val_metric"]] for stage, t in times.items()]
    return _table(["stage", "epochs", "CPU minutes", "best validation metric"], rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="weights")
    card = read_model_card(parser.parse_args(argv).weights)
    ood = card["ood"]["flagged_fraction"]
    print(f"Model card {card['version']} ({card['created']})\n")
    print("Classification, HAM10000 lesion-grouped test split\n\n" + classification_table(card) + "\n")
    print("mask-CN per class\n\n" + per_class_table(card) + "\n")
    print("Segmentation\n\n" + segmentation_table(card) + "\n")
    print("Training (CPU)\n\n" + training_table(card) + "\n")
    print(f"Decision rule: logit adjustment tau={card['decision_rule']['logit_adjustment_tau']:.2f}, "
          f"temperature={card['temperature']:.3f} (both fitted on validation)")
    print("OOD flagged fraction: " + ", ".join(f"{k} {v:.1%}" for k, v in ood.items() if v is not None))


if __name__ == "__main__":
    main()
