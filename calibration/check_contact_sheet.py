"""A contact sheet of the dermoscopy check's held-out misses on both sides, to see what they have in common:

    python -m calibration.check_contact_sheet --weights weights --out artifacts/dermoscopy_check_misses.png

Top: dermoscopy images refused by a check fitted without their acquisition source (P(dermoscopy) below the card's
threshold), lowest first. Bottom: clinical photos let through by a check fitted without their collection (DermNet
without its watermark corner, PAD-UFES-20 whole), highest first. Reads the held-out scores that
calibration.fit_dermoscopy_check leaves beside its feature cache.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from core.decisions.model_card import load_card
from core.io.intake import load_image_file
from calibration.check_views import crop_view
from calibration.fit_dermoscopy_check import SCORES_FILE

THUMB = (150, 200)   # (H, W) of each tile, the classifier input's shape
PER_ROW = 8
CAPTION = 18         # pixels under each tile for its caption


def misses(scores: pd.DataFrame, threshold: float, limit: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(dermoscopy refused held out by source, lowest P first; clinical photos passed held out by collection,
    highest P first), at most `limit` each."""
    by_source = scores["protocol"].str.startswith("held_out_source:") & (scores["protocol"] != "held_out_source:acral_all")
    refused = scores[by_source & (scores["view"] == "whole") & (scores["p_dermoscopy"] < threshold)]
    measured_view = np.where(scores["watermarked"], scores["view"] == "top", scores["view"] == "whole")
    passed = scores[(scores["protocol"] == "held_out_collection") & measured_view & (scores["p_dermoscopy"] >= threshold)]
    return (refused.sort_values("p_dermoscopy").head(limit),
            passed.sort_values("p_dermoscopy", ascending=False).head(limit))


def tile(row) -> np.ndarray:
    rgb = crop_view(load_image_file(row.path), row.view, f"{row.collection}/{row.image_id}/{row.view}", bool(row.watermarked))
    h, w = THUMB
    scale = min(h / rgb.shape[0], w / rgb.shape[1])
    small = cv2.resize(rgb, (max(1, int(rgb.shape[1] * scale)), max(1, int(rgb.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    out = np.full((h + CAPTION, w, 3), 255, np.uint8)
    y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    text = f"{row.collection[:14]} {row.p_dermoscopy:.2f}"
    cv2.putText(out, text, (3, h + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def sheet(rows: pd.DataFrame, title: str) -> np.ndarray:
    tiles = [tile(row) for row in rows.itertuples(index=False)]
    th, tw = THUMB[0] + CAPTION, THUMB[1]
    n_rows = max(1, -(-len(tiles) // PER_ROW))
    out = np.full((30 + n_rows * (th + 4), PER_ROW * (tw + 4), 3), 255, np.uint8)
    cv2.putText(out, title, (4, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for i, t in enumerate(tiles):
        r, c = divmod(i, PER_ROW)
        out[30 + r * (th + 4):30 + r * (th + 4) + th, c * (tw + 4):c * (tw + 4) + tw] = t
    return out


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--scores", type=Path, default=Path(".cache/dermoscopy_check") / SCORES_FILE)
    parser.add_argument("--out", type=Path, default=Path("artifacts/dermoscopy_check_misses.png"))
    parser.add_argument("--limit", type=int, default=32)
    args = parser.parse_args(argv)
    threshold = load_card(args.weights).dermoscopy_check.threshold
    refused, passed = misses(pd.read_csv(args.scores, dtype={"image_id": str}), threshold, args.limit)
    parts = [sheet(refused, f"Dermoscopy refused, source held out (P(dermoscopy) < {threshold:.3f}), lowest first"),
             sheet(passed, f"Clinical photos let through, collection held out (P >= {threshold:.3f}), highest first")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), np.concatenate(parts)[:, :, ::-1])
    print(f"{len(refused)} dermoscopy refused, {len(passed)} clinical photos passed -> {args.out}")
    return args.out


if __name__ == "__main__":
    main()
