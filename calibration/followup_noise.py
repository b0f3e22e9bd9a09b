"""Measurement noise of a lesion follow-up: the "no real change" band of the Compare page.

    python -m calibration.followup_noise --data-dir ../shared/data --weights weights --out weights/followup_noise.json

HAM10000 photographs many lesions more than once (same lesion_id, usually minutes apart, at another zoom, angle or
framing): differences between two such images are what the pipeline reports when nothing has changed. For up to
--max-pairs lesions of the TRAIN and VALIDATION splits (never test; one randomly chosen pair of distinct images per
lesion, in random order, seeded), both 200x150 images are analysed with the shipped Analyzer and compared exactly as
the Compare page does (core.analysis.followup.compare_images). The JSON holds, per measurement, quantiles of |change| and the
band (the --quantile one), the number of pairs, how many registered by feature matching (size changes only count
for registered pairs whose lesion lies inside both images, as on the page) and the weights (version and a digest of
the weight files) it was computed with.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.data.datasets import DatasetError, load_manifest
from core.analysis.followup import (BAND_QUANTILE, MIN_INLIERS, SCALE_RANGE, compare_images, noise_band,
                                    weights_fingerprint)
from core.analysis.inference import Analyzer
from core.io.intake import load_image_file
from calibration.card_io import Split


NOISE_SPLITS = ("train", "val")  # never test: the test split stays unseen


def same_lesion_pairs(table: pd.DataFrame, max_pairs: int, seed: int) -> list[tuple[pd.Series, pd.Series]]:
    """One (baseline, follow-up) pair of distinct image files per lesion for up to max_pairs lesions, seeded."""
    rng = np.random.default_rng(seed)
    groups = [group.sort_values("image_id") for _, group in table.groupby("lesion_id", sort=True) if len(group) > 1]
    pairs = []
    for index in rng.permutation(len(groups)):
        group = groups[index]
        first, second = rng.choice(len(group), size=2, replace=False)
        a, b = group.iloc[first], group.iloc[second]
        if Path(a["image_path"]).read_bytes() == Path(b["image_path"]).read_bytes():
            continue  # the two byte-identical HAM10000 duplicates are not a second photograph
        pairs.append((a, b))
        if len(pairs) == max_pairs:
            break
    return pairs


def noise_pairs(manifest: pd.DataFrame, max_pairs: int, seed: int) -> list[tuple[pd.Series, pd.Series]]:
    """same_lesion_pairs of the NOISE_SPLITS images of a manifest with splits."""
    return same_lesion_pairs(manifest[manifest["split"].isin(NOISE_SPLITS)], max_pairs, seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m calibration.followup_noise", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path, help="dataset folder holding ham10000/")
    parser.add_argument("--weights", default=Path("weights"), type=Path, help="weights folder (default weights)")
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--max-pairs", type=int, default=400, help="lesions (pairs) to use (default 400)")
    parser.add_argument("--quantile", type=float, default=BAND_QUANTILE, help="band quantile (default 0.95)")
    parser.add_argument("--seed", type=int, default=42, help="pair seed (default 42)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: one image at a time is fastest on a busy 2-core machine)")
    parser.add_argument("--split-file", default="", help="split CSV (train.splits); default: the split of the card "
                                                         "in WEIGHTS")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.quantile < 1 or args.max_pairs < 1:
        print("error: --quantile must be in (0, 1) and --max-pairs at least 1", file=sys.stderr)
        return 2
    command = "python -m calibration.followup_noise " + shlex.join(argv if argv is not None else sys.argv[1:])
    try:
        split = Split.of_args(args.split_file, args.weights)
        result = noise_band_file(args.data_dir, Analyzer.load(args.weights), split, args.out, args.max_pairs,
                                 args.quantile, args.seed, args.threads, command)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, entry in result["measurements"].items():
        print(f"  {key:<20} {entry['change']:<8} n={entry['n_pairs']:<4} band {entry['band']}")
    return 0


def noise_band_file(data_dir: Path, analyzer: Analyzer, split: Split, out: Path, max_pairs: int = 400,
                    quantile: float = BAND_QUANTILE, seed: int = 42, threads: int = 1, command: str = "") -> dict:
    """Measure the band with `analyzer` (its card's weights) on the model's split and write it to `out`."""
    manifest = split.apply(load_manifest(data_dir, sources=("ham10000",)))
    pairs = noise_pairs(manifest, max_pairs, seed)
    torch.set_num_threads(max(1, threads))
    started = time.time()
    tables = []
    for done, (a, b) in enumerate(pairs, start=1):
        comparison = compare_images(analyzer, load_image_file(a["image_path"]), load_image_file(b["image_path"]))
        tables.append((comparison.registration.registered, comparison.changes))
        if done % 50 == 0 or done == len(pairs):
            print(f"{done}/{len(pairs)} pairs, {time.time() - started:.0f} s", flush=True)
    result = {
        "weights_version": analyzer.version,
        "weights_fingerprint": weights_fingerprint(analyzer.card),
        "quantile": quantile,
        "n_pairs": len(tables),
        "n_registered": sum(registered for registered, _ in tables),
        "images": "200x150 px images of the train + validation splits, one pair per lesion",
        "split": split.text(),
        "registration": {"min_inliers": MIN_INLIERS, "scale_range": list(SCALE_RANGE)},
        "command": command,
        "measurements": noise_band([changes for _, changes in tables], quantile),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}: {result['n_pairs']} pairs ({result['n_registered']} registered), "
          f"{time.time() - started:.0f} s")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
