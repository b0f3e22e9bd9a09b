"""Batch prediction from the command line.

    python -m core.predict PATH... --out OUT_DIR [--weights DIR]

PATHs are image files or folders (the formats of core.intake.FILE_EXTENSIONS; folders are not recursed). Writes
OUT_DIR/predictions.csv (image, pred, p_<class>..., ood, error) and OUT_DIR/masks/<image>.png (0/255, the input
image's size). A file that cannot be read gets its error row and the rest go on.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from core.classes import CLASS_CODES
from core.inference import DEFAULT_WEIGHTS_DIR, Analyzer
from core.intake import FILE_EXTENSIONS, ImageRejected, load_image_file

IMAGE_SUFFIXES = {f".{extension}" for extension in FILE_EXTENSIONS}
COLUMNS = ["image", "pred", *[f"p_{c}" for c in CLASS_CODES], "ood", "error"]


def collect_paths(inputs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(path)  # a missing or odd file still gets its own error row
    return paths


def predict_one(analyzer: Analyzer, path: Path, mask_dir: Path) -> dict:
    row = {"image": path.stem, "pred": "", **{f"p_{c}": "" for c in CLASS_CODES}, "ood": "", "error": ""}
    try:
        rgb = load_image_file(path)
        result = analyzer.analyze(rgb)
    except ImageRejected as exc:
        row["error"] = str(exc)
        return row
    except Exception as exc:  # one bad file must never stop the batch
        row["error"] = f"analysis failed: {exc}"
        return row
    row.update({"pred": result.label, "ood": int(result.ood)})
    row.update({f"p_{c}": f"{p:.5f}" for c, p in result.probs.items()})
    cv2.imwrite(str(mask_dir / f"{path.stem}.png"), result.mask)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS_DIR))
    args = parser.parse_args(argv)

    paths = collect_paths(args.paths)
    if not paths:
        parser.error("no image files found in the given paths")
    out = Path(args.out)
    mask_dir = out / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    analyzer = Analyzer.load(args.weights)
    rows = [predict_one(analyzer, p, mask_dir) for p in tqdm(paths, desc="analysing", unit="image", file=sys.stderr)]
    with open(out / "predictions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    failed = sum(1 for r in rows if r["error"])
    print(f"{len(rows) - failed} analysed, {failed} failed -> {out / 'predictions.csv'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
