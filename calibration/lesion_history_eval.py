"""False alarms and detection of a lesion history (core.analysis.lesion_history) on real lesions.

    python -m calibration.lesion_history_eval --data-dir ../shared/data --out docs/lesion_history_eval.json

Series: every HAM10000 lesion of the TEST split photographed two or more times (distinct files), its images in
image-id order as visits 90 days apart (HAM10000 has no dates; the photographs of one lesion were taken at one
visit, so nothing changed between them). The no-change band was estimated on train + validation lesions only.

1. No change: the share of series whose verdict says "changed" (any finding: top class, triage verdict or a
   measurement beyond its band) is the false-alarm rate; also for size alone (diameter or area) and per cause.
2. Enlargement: the last visit's lesion is grown by a known factor g of its diameter (``enlarge``: a radial warp
   about the lesion centroid, the skin beyond g + 0.5 lesion radii left in place) and the series is analysed again,
   for two growth models: "peripheral" (the lesion's centre stays, its border moves out) and "uniform" (the whole
   lesion magnified, which feature registration partly mistakes for a zoom when most features lie on the lesion). Detected = a size change (diameter or area) beyond the band at the last visit; right
   visit = no earlier visit has a size change. The enlargement actually achieved is measured on the model's own mask
   warped the same way (the diameter ratio), and reported beside g.
3. Another lesion: the last visit replaced by a test image of another lesion (another diagnosis); refused = that
   visit is marked "may not be the same lesion".

Rates with bootstrap 95 % intervals (series resampled). One torch thread; about 6 minutes on the 2-core development machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from core.analysis.followup import BAND_FILE, BEYOND, load_band
from core.analysis.inference import Analyzer
from core.analysis.metrics import value_with_ci
from core.analysis.lesion_history import Visit, lesion_history
from core.data.datasets import load_manifest
from core.data.splits import assign_splits
from core.io.intake import load_image_file
from core.lesion.lesion_measurements import measure_lesion

GROWTH = (1.10, 1.20, 1.30)
GROWTH_MODELS = {"peripheral": 0.5, "uniform": 0.0}   # enlarge's core
INTERVAL_DAYS = 90
SIZE_KEYS = ("max_diameter", "area")
TAPER = 0.5   # the skin ring from g R to (g + TAPER) R absorbs the growth; beyond it the image is unchanged


def rate(flags: list[bool]) -> dict:
    """The share of True with its bootstrap 95 % CI."""
    values = np.asarray(flags, dtype=float)
    if not len(values):
        return {"count": 0, "of": 0, "rate": None, "ci95": [None, None]}
    found = value_with_ci(lambda rows: values[rows].mean(), len(values))
    return {"count": int(values.sum()), "of": len(values), "rate": round(found["value"], 3),
            "ci95": [round(v, 3) for v in found["ci95"]]}


def enlarge(rgb: np.ndarray, mask: np.ndarray, growth: float, core: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The image and its lesion mask with the lesion grown by ``growth`` (diameter factor) about its centroid. With R
    the farthest lesion pixel's distance: the disc of radius ``core`` x R stays as it is, the ring from there to R is
    stretched out to growth x R, the skin ring from R to (growth + TAPER) x R is squeezed to fit, and the image
    beyond is unchanged. core 0: the whole lesion magnified (as a zoom onto it would look); core 0.5: growth at the
    border, the centre's structures in place."""
    ys, xs = np.nonzero(mask > 127)
    cy, cx = ys.mean(), xs.mean()
    radius = float(np.hypot(ys - cy, xs - cx).max()) + 1.0
    fixed, inner, outer = core * radius, growth * radius, (growth + TAPER) * radius
    yy, xx = np.indices(mask.shape, dtype=np.float32)
    dy, dx = yy - cy, xx - cx
    r = np.hypot(dx, dy)
    source = np.where(r <= fixed, r,
                      np.where(r <= inner, fixed + (r - fixed) * (radius - fixed) / (inner - fixed),
                               np.where(r < outer, radius + (r - inner) * (outer - radius) / (outer - inner), r)))
    factor = np.divide(source, r, out=np.ones_like(r), where=r > 0)
    map_x, map_y = (cx + dx * factor).astype(np.float32), (cy + dy * factor).astype(np.float32)
    grown = cv2.remap(rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    grown_mask = cv2.remap(mask, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return grown, grown_mask


def series_of(test: pd.DataFrame) -> list[pd.DataFrame]:
    """The test lesions with two or more distinct image files, each its rows in image-id order."""
    found = []
    for _, group in test.groupby("lesion_id", sort=True):
        group = group.sort_values("image_id")
        contents = [Path(p).read_bytes() for p in group["image_path"]]
        keep = [i for i, data in enumerate(contents) if data not in contents[:i]]
        if len(keep) >= 2:
            found.append(group.iloc[keep])
    return found


def _visits(images: list[np.ndarray]) -> list[Visit]:
    start = dt.date(2026, 1, 5)
    return [Visit(rgb, start + dt.timedelta(days=INTERVAL_DAYS * i), f"visit {i + 1}") for i, rgb in enumerate(images)]


def _size_flags(history) -> list[int]:
    """Visit numbers with a size change beyond the band."""
    return sorted({n for key in SIZE_KEYS for n, p in enumerate(history.series(key), start=1) if p.status == BEYOND})


@dataclass
class Tally:
    """What the series add up to, series by series: no-change verdicts, each (growth model, factor)'s detections,
    whether another lesion's image was refused."""
    refused_all: int = 0                                  # series whose every later visit was doubted
    changed: list[bool] = field(default_factory=list)
    size: list[bool] = field(default_factory=list)
    categorical: list[bool] = field(default_factory=list)
    by_measure: dict[str, int] = field(default_factory=dict)
    grown: dict = field(default_factory=lambda: {(model, g): {"assessable": 0, "detected": [], "right_visit": [],
                                                              "achieved": []}
                                                 for model in GROWTH_MODELS for g in GROWTH})
    other_refused: list[bool] = field(default_factory=list)
    visits: int = 0


def tally_no_change(tally: Tally, history, n_visits: int) -> None:
    """The series as photographed: nothing changed, so any change found is a false alarm."""
    if len(history.doubted()) == n_visits - 1:
        tally.refused_all += 1
        return
    tally.changed.append(history.first_change() is not None)
    tally.size.append(bool(_size_flags(history)))
    tally.categorical.append(any(a.to_first.categorical for a in history.visits[1:] if not a.doubt))
    for analysis in history.visits[1:]:
        for c in ([] if analysis.doubt else analysis.to_first.beyond_noise()):
            tally.by_measure[c.measure.key] = tally.by_measure.get(c.measure.key, 0) + 1


def tally_enlargements(tally: Tally, analyzer: Analyzer, band, images: list, results: list, visits: list) -> None:
    """The series again with its last visit's lesion grown, for every growth model and factor."""
    last = len(visits)
    for (model, g), entry in tally.grown.items():
        if results[-1].measurements.get("empty"):
            continue
        rgb, mask = enlarge(images[-1], results[-1].mask, g, GROWTH_MODELS[model])
        before, after = measure_lesion(results[-1].mask), measure_lesion(mask)
        entry["achieved"].append(after["max_diameter_px"] / before["max_diameter_px"])
        enlarged = lesion_history(analyzer, visits[:-1] + [Visit(rgb, visits[-1].date, "grown")], band,
                                  results=results[:-1] + [analyzer.analyze(rgb)])
        target = enlarged.visits[-1]
        if target.doubt or target.to_first.size_note:
            continue  # cut by the image edge or not registered: sizes are not assessed
        entry["assessable"] += 1
        flags = _size_flags(enlarged)
        entry["detected"].append(last in flags)
        entry["right_visit"].append(flags[:1] == [last])


def another_lesion_refused(analyzer: Analyzer, band, test: pd.DataFrame, rows: pd.DataFrame, visits: list,
                           results: list, rng: np.random.Generator) -> bool:
    """The last visit replaced by a test image of another lesion with another diagnosis: marked "may not be the same
    lesion"?"""
    stranger = test[(test["lesion_id"] != rows["lesion_id"].iloc[0]) & (test["dx"] != rows["dx"].iloc[0])]
    pick = stranger.iloc[int(rng.integers(len(stranger)))]
    mixed = lesion_history(analyzer, visits[:-1] + [Visit(load_image_file(pick["image_path"]), visits[-1].date)],
                           band, results=results[:-1] + [None])
    return bool(mixed.visits[-1].doubt)


def tally_series(tally: Tally, analyzer: Analyzer, band, test: pd.DataFrame, rows: pd.DataFrame,
                 rng: np.random.Generator) -> None:
    """One lesion's photographs as visits: as they are, with the last lesion grown, with another lesion last."""
    images = [load_image_file(p) for p in rows["image_path"]]
    results = [analyzer.analyze(rgb) for rgb in images]
    visits = _visits(images)
    tally.visits += len(visits)
    tally_no_change(tally, lesion_history(analyzer, visits, band, results=results), len(visits))
    tally_enlargements(tally, analyzer, band, images, results, visits)
    tally.other_refused.append(another_lesion_refused(analyzer, band, test, rows, visits, results, rng))


def report_of(tally: Tally, series: int, band_text: str, argv: list[str] | None, seconds: float) -> dict:
    return {
        "command": "python -m calibration.lesion_history_eval " + " ".join(argv or []),
        "series": series, "visits": tally.visits, "interval_days": INTERVAL_DAYS, "band": band_text,
        "no_change": {"refused_all_visits": tally.refused_all, "false_alarm_any": rate(tally.changed),
                      "false_alarm_size": rate(tally.size), "false_alarm_top_class_or_verdict": rate(tally.categorical),
                      "visits_beyond_band_by_measure": tally.by_measure},
        "enlargement": {f"{model} x{g:.2f}": {
            "achieved_diameter_ratio_median": round(float(np.median(e["achieved"])), 3) if e["achieved"] else None,
            "assessable_series": e["assessable"], "detected": rate(e["detected"]),
            "flagged_at_the_right_visit": rate(e["right_visit"])} for (model, g), e in tally.grown.items()},
        "another_lesion_refused": rate(tally.other_refused),
        "seconds": round(seconds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calibration.lesion_history_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--weights", default=Path("weights"), type=Path)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write (default: print only)")
    parser.add_argument("--max-series", type=int, default=150,
                        help="use at most this many lesions, in lesion-id order (default 150; 0: all)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    manifest = assign_splits(load_manifest(args.data_dir, sources=("ham10000",)), args.seed)
    test = manifest[manifest["split"] == "test"]
    lesions = series_of(test)
    if args.max_series:
        lesions = lesions[:args.max_series]
    analyzer = Analyzer.load(args.weights)
    band, band_text = load_band(args.weights / BAND_FILE, analyzer.card)
    if band is None:
        raise SystemExit(f"error: {band_text}")
    rng = np.random.default_rng(args.seed)
    started = time.time()
    tally = Tally()
    for done, rows in enumerate(lesions, start=1):
        tally_series(tally, analyzer, band, test, rows, rng)
        if done % 25 == 0:
            print(f"{done}/{len(lesions)} series, {time.time() - started:.0f} s", flush=True)
    text = json.dumps(report_of(tally, len(lesions), band_text, argv, time.time() - started), indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
