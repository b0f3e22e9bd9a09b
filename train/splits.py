"""Write a leak-free train/val/test split file for a dataset folder.

    python -m train.splits --data-dir ../shared/data --out splits.csv [--seed 42]

The file has one row per image: image_id,source,split. HAM10000 (and plain class folders) are split by
lesion (byte-identical duplicates kept together), stratified by diagnosis, about 70/15/15; ISIC 2017 keeps
its official train/val split. Read it back with core.data.datasets.apply_split_file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from core.data.classes import CLASS_CODES
from core.data.datasets import SOURCES, SPLITS, DatasetError, load_manifest
from core.data.splits import assign_splits, lesion_leaks


def split_table(manifest: pd.DataFrame) -> str:
    """A per-source, per-class table of image counts in each split (plain text)."""
    lines = []
    for source, part in manifest.groupby("source", sort=True):
        splits = [s for s in SPLITS if (part["split"] == s).any()]
        header = f"{source:<10}" + "".join(f"{s:>8}" for s in splits) + f"{'total':>8}"
        lines += [header, "-" * len(header)]
        for code in CLASS_CODES:
            rows = part[part["dx"] == code]
            if rows.empty:
                continue
            cells = [int((rows["split"] == s).sum()) for s in splits]
            lines.append(f"{code:<10}" + "".join(f"{c:>8}" for c in cells) + f"{len(rows):>8}")
        totals = [int((part["split"] == s).sum()) for s in splits]
        lines.append(f"{'total':<10}" + "".join(f"{c:>8}" for c in totals) + f"{len(part):>8}")
        lines.append(f"{'share':<10}" + "".join(f"{c / len(part):>8.1%}" for c in totals))
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.splits", description="Write a leak-free image_id,source,split CSV for a dataset folder."
    )
    parser.add_argument("--data-dir", required=True, type=Path, help="dataset folder (e.g. ../shared/data)")
    parser.add_argument("--out", required=True, type=Path, help="CSV file to write")
    parser.add_argument("--seed", type=int, default=42, help="random seed of the grouped split (default 42)")
    parser.add_argument("--val-frac", type=float, default=0.15, help="validation share (default 0.15)")
    parser.add_argument("--test-frac", type=float, default=0.15, help="test share (default 0.15)")
    parser.add_argument(
        "--sources", nargs="+", choices=SOURCES, default=list(SOURCES),
        help="datasets to read when DATA_DIR holds ham10000/ and isic2017/ (default both)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        manifest = load_manifest(args.data_dir, sources=tuple(args.sources))
        split = assign_splits(manifest, seed=args.seed, val_frac=args.val_frac, test_frac=args.test_frac)
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    leaks = lesion_leaks(split)
    if leaks:  # would be a bug in assign_splits; never write a leaking file
        print(f"error: {len(leaks)} lesion(s) in more than one split, e.g. {leaks[0]}", file=sys.stderr)
        return 3
    args.out.parent.mkdir(parents=True, exist_ok=True)
    listed = split[split["split"] != ""]  # rows left out of every split (a duplicate of a test image) are not listed
    listed[["image_id", "source", "split"]].to_csv(args.out, index=False)
    print(split_table(split))
    print(f"wrote {len(listed)} rows to {args.out} (seed {args.seed}); left out: {len(split) - len(listed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
