"""How well the dermoscopy score (core.lesion.lesion_measurements: partial TDS = 1.3 A + 0.1 B + 0.5 C) separates
melanoma from every other class on the two test sets, with bootstrap 95 % CIs.

    python -m calibration.dermoscopy_score_auc --data-dir ../shared/data --out docs/dermoscopy_score_auc.json

Test sets: the HAM10000 test split (lesion-grouped, seed 42) and the ISIC 2017 test set (its official validation
part), as in the model card. Each image is measured twice: on the expert lesion mask of the dataset (the score as a
rule) and on the app's own mask (the Analyzer: what a user sees), whose melanoma score (the referral rule's) is
reported beside it for reference. One torch thread; about 4 minutes on the 2-core development machine.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from core.analysis.metrics import value_with_ci

from core.analysis.inference import Analyzer
from core.data.datasets import load_manifest
from core.data.splits import assign_splits
from core.io.intake import load_image_file
from core.lesion.lesion_measurements import measure_lesion

TEST_SETS = {"ham10000": "HAM10000 test", "isic2017": "ISIC 2017 test (official validation)"}
COMPONENTS = ("dermoscopy_score", "asymmetric_axes", "abrupt_border_segments", "n_colours")


def auc_with_ci(is_mel: np.ndarray, score: np.ndarray, lesions: np.ndarray, resamples: int) -> dict:
    """AUC and its percentile bootstrap 95 % CI (whole lesions resampled: several images of one lesion move
    together)."""
    def auc(rows: np.ndarray) -> float | None:
        return roc_auc_score(is_mel[rows], score[rows]) if 0 < is_mel[rows].sum() < len(rows) else None

    found = value_with_ci(auc, len(score), lesions, resamples)
    return {"auc": round(found["value"], 3), "ci95": [round(v, 3) for v in found["ci95"]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calibration.dermoscopy_score_auc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--weights", default=Path("weights"), type=Path)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write (default: print only)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    manifest = assign_splits(load_manifest(args.data_dir, sources=tuple(TEST_SETS)), args.seed)
    test = manifest[manifest["split"] == "test"]
    analyzer = Analyzer.load(args.weights)
    started = time.time()
    rows = []
    for done, row in enumerate(test.itertuples(), start=1):
        rgb = load_image_file(row.image_path)
        expert = measure_lesion(cv2.imread(row.mask_path, cv2.IMREAD_GRAYSCALE), rgb) if row.mask_path else None
        result = analyzer.analyze(rgb)
        rows.append({"source": row.source, "lesion": row.lesion_id or row.image_id, "mel": row.dx == "mel",
                     "expert": expert, "model": result.measurements,
                     "mel_score": result.mel_score})
        if done % 200 == 0:
            print(f"{done}/{len(test)} images, {time.time() - started:.0f} s", flush=True)
    report = {"command": "python -m calibration.dermoscopy_score_auc " + " ".join(argv or []),
              "resamples": args.resamples, "test_sets": {}}
    for source, title in TEST_SETS.items():
        part = [r for r in rows if r["source"] == source]
        is_mel, lesions = np.array([r["mel"] for r in part]), np.array([r["lesion"] for r in part])
        entry = {"title": title, "images": len(part), "melanomas": int(is_mel.sum())}
        for masks in ("expert", "model"):
            usable = [i for i, r in enumerate(part) if r[masks] and r[masks].get("dermoscopy_score") is not None]
            entry[f"{masks}_masks"] = {"images": len(usable), **{
                name: auc_with_ci(is_mel[usable], np.array([part[i][masks][name] for i in usable], float),
                                  lesions[usable], args.resamples) for name in COMPONENTS}}
        entry["model_mel_score"] = auc_with_ci(is_mel, np.array([r["mel_score"] for r in part]), lesions,
                                               args.resamples)
        report["test_sets"][source] = entry
        print(f"{title}: dermoscopy score AUC {entry['model_masks']['dermoscopy_score']} (app masks), "
              f"{entry['expert_masks']['dermoscopy_score']} (expert masks); melanoma score "
              f"{entry['model_mel_score']}")
    report["seconds"] = round(time.time() - started)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
