"""Compare training recipes on an acquisition source none of them was trained on: the held-out criterion.

    python -m train.compare_recipes --data-dir ../shared/data --held-out acral --splits train,val,test \
        --member base=runs/mcn_A_base/best.safetensors --member derm=runs/mcn_B_derm/best.safetensors

Each member is a mask-CN weight file; coarse-SN (and enhanced-SN, unused here) come from --weights. Every member is
run over the held-out source's images with the shipped 8 test-time views (softmax averaged), and scored on what the
verdict rests on: melanoma AUC, the AUC of "any malignant class" (mel + bcc + akiec), balanced accuracy over the
classes present, and the share of benign lesions below the P(melanoma) that catches 90 % of the melanomas (a point of
the ROC curve, like the AUC a property of the ranking: no rule is fitted on the held-out images). Every figure has a bootstrap 95 % CI that resamples
whole lesions; each member's difference to the first member is bootstrapped on the same draws (a paired CI), so a
lever counts only where that interval excludes 0. Writes --out (JSON) and prints a table.

The test-time views are a lever too: `--views 8,4,2,1` scores every member with the first 8, 4, 2 and 1 of the
dihedral views (core.imaging.tta: identity, horizontal flip, vertical flip, both, then the transposes), computed
once, so each view count is a member of its own ("shipped@4") and the first count is the baseline.

A member may be an ensemble: `--member ens=a.safetensors+b.safetensors` averages the members' view-averaged
softmax (each network is run once, however many members name it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from core.analysis.metrics import balanced_accuracy, binary_auc, format_with_ci, softmax_with_temperature, value_with_ci
from core.data.acquisition import acquisition_sources
from core.data.classes import CLASS_INDEX, MALIGNANT_INDICES
from core.data.datasets import SOURCES, load_manifest
from core.data.splits import assign_splits
from core.imaging.tta import ALL_VIEWS
from train.network_outputs import load_network, split_outputs

MALIGNANT = list(MALIGNANT_INDICES)
MEL = CLASS_INDEX["mel"]


def member_probabilities(logits: np.ndarray, views: int | None = None) -> np.ndarray:
    """(views, N, K) logits -> (N, K): the softmax averaged over the first `views` test-time views (all by default)."""
    return softmax_with_temperature(logits[:views], 1.0).mean(0)


def ensemble_probabilities(networks: list[np.ndarray], views: int | None = None) -> np.ndarray:
    """Each network's (views, N, K) logits -> (N, K): the mean over networks of their view-averaged softmax."""
    return np.mean([member_probabilities(logits, views) for logits in networks], axis=0)


def view_counts(spec: str) -> list[int]:
    """"8,4,2,1" -> [8, 4, 2, 1]: how many of the ALL_VIEWS each scored variant averages."""
    counts = [int(v) for v in spec.split(",") if v]
    if not counts or any(c < 1 or c > len(ALL_VIEWS) for c in counts):
        raise argparse.ArgumentTypeError(f"--views takes counts between 1 and {len(ALL_VIEWS)}, got {spec!r}")
    return counts


def specificity_at_sensitivity(is_positive: np.ndarray, score: np.ndarray, is_negative: np.ndarray,
                               sensitivity: float = 0.9) -> float | None:
    """Share of negatives scored below the highest threshold that still calls `sensitivity` of the positives."""
    if not is_positive.any() or not is_negative.any():
        return None
    ranked = np.sort(score[is_positive])[::-1]
    threshold = ranked[int(np.ceil(sensitivity * len(ranked))) - 1]
    return float((score[is_negative] < threshold).mean())


def statistics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """name -> statistic(rows) for one member's probabilities."""
    malignant = np.isin(labels, MALIGNANT)
    is_mel = labels == MEL
    return {
        "melanoma_auc": lambda rows: binary_auc(is_mel[rows], probs[rows, MEL]),
        "malignant_auc": lambda rows: binary_auc(malignant[rows], probs[rows][:, MALIGNANT].sum(1)),
        "balanced_accuracy": lambda rows: balanced_accuracy(labels[rows], probs[rows].argmax(1)),
        "benign_specificity_at_90_melanoma_sensitivity": lambda rows: specificity_at_sensitivity(
            is_mel[rows], probs[rows, MEL], ~malignant[rows]),
    }


def compare(labels: np.ndarray, groups: np.ndarray, probs: dict[str, np.ndarray], resamples: int = 1000) -> dict:
    """Every member's figures with CIs and, for the second member on, the paired difference to the first."""
    names = list(probs)
    stats = {name: statistics(labels, p) for name, p in probs.items()}
    n = len(labels)
    out = {}
    for name in names:
        row = {key: value_with_ci(f, n, groups, resamples) for key, f in stats[name].items()}
        if name != names[0]:
            def difference(f, g):
                return lambda rows: None if f(rows) is None or g(rows) is None else f(rows) - g(rows)
            row["difference_to_" + names[0]] = {key: value_with_ci(difference(f, stats[names[0]][key]), n, groups,
                                                                   resamples) for key, f in stats[name].items()}
        out[name] = row
    return out


def table(result: dict) -> str:
    keys = ["melanoma_auc", "malignant_auc", "balanced_accuracy", "benign_specificity_at_90_melanoma_sensitivity"]
    lines = ["| member | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in result.items():
        lines.append(f"| {name} | " + " | ".join(format_with_ci(row[k]) for k in keys) + " |")
        for diff_name, diff in ((k, v) for k, v in row.items() if k.startswith("difference_to_")):
            lines.append(f"| {name} - {diff_name[len('difference_to_'):]} | "
                         + " | ".join(format_with_ci(diff[k]) for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=Path("weights"), help="where coarse-SN and enhanced-SN are")
    parser.add_argument("--held-out", required=True, help="acquisition source(s), comma-separated, e.g. acral or "
                        "one acral contributor (acral_imperial)")
    parser.add_argument("--splits", default="val,test", help="which of the held-out source's splits to score "
                        "(train too when no member trained on the source)")
    parser.add_argument("--member", action="append", required=True, help="NAME=mask-CN weight file (first = baseline)")
    parser.add_argument("--views", type=view_counts, default=None, help="view counts to compare, e.g. 8,4,2,1 (the "
                        "first is the baseline); default: every member with all 8 views")
    parser.add_argument("--split-seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    held_out = [s for s in args.held_out.split(",") if s]
    manifest = assign_splits(load_manifest(args.data_dir, SOURCES), args.split_seed)
    by_contributor = acquisition_sources(manifest, args.data_dir, acral_contributors=True)
    manifest["acquisition"] = acquisition_sources(manifest, args.data_dir)
    rows = manifest[(manifest["acquisition"].isin(held_out) | by_contributor.isin(held_out)) & manifest["split"].isin(args.splits.split(","))]
    rows = rows.reset_index(drop=True)
    if rows.empty:
        sys.exit(f"no images of {held_out} in splits {args.splits}")
    base = {"coarse_sn": load_network(args.weights / "coarse_sn.safetensors"),
            "enhanced_sn": load_network(args.weights / "enhanced_sn.safetensors")}
    members = {name: path.split("+") for name, path in (spec.split("=", 1) for spec in args.member)}
    logits = {}
    for path in dict.fromkeys(p for paths in members.values() for p in paths):
        network = {**base, "mask_cn": load_network(Path(path))}
        logits[path] = split_outputs(network, rows, segmentation=False, views=ALL_VIEWS)["logits"]
    probs = {(name if args.views is None else f"{name}@{count}"): ensemble_probabilities([logits[p] for p in paths], count)
             for count in (args.views or [None]) for name, paths in members.items()}
    labels = np.array([CLASS_INDEX[d] for d in rows["dx"]])
    result = compare(labels, rows["lesion_id"].to_numpy(), probs)
    summary = {"held_out": held_out, "splits": args.splits, "n_images": len(rows),
               "n_melanomas": int((labels == MEL).sum()),
               "members": {name: "+".join(paths) for name, paths in members.items()},
               "views": args.views or [len(ALL_VIEWS)], "results": result}
    print(f"held out: {', '.join(held_out)} ({args.splits}): {len(rows)} images, {summary['n_melanomas']} melanomas")
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
