"""Fit the image-quality checks (core.decisions.image_quality): the model card's `image_quality` section.

    python -m calibration.fit_image_quality --data-dir ../shared/data --weights weights  # a calibration.calibrate step

1. The Analyzer of the card being built (with no quality check applied yet) analyses every validation and test image
   of the model's split (HAM10000 + ISIC 2017); each image's quality measures (on the image and the lesion mask the
   Analyzer segmented), its top class and OOD level are cached in runs/image_quality/<card key>/measures.csv, one
   folder per networks-and-rules combination (--max-new splits this step over several runs).
   Images the OOD check refuses (clinical_photo / not_skin) get no analysis and take no part.
2. Threshold per check, from validation only (HAM10000 val + the ISIC 2017 val part): the TAIL_SHARES quantile of
   the measure on the check's side whose flagged images have the largest top-1 error excess over the rest.
3. Consequence, on the test split: the top-1 error of the images a check flags against the rest, with bootstrap 95 %
   CIs grouped by lesion, for the shipped model's predictions and, where runs/oos/predictions.csv exists, for the
   leave-one-source-out model's (`pred_loso`: a model that never saw the image's acquisition source: the held-out
   source figure). A check is kept only if the lower CI bound of the held-out error excess is above 0; the card's
   `thresholds` lists the kept checks (the Analyzer applies only those), `checks` every figure.
4. The `triage` column of WEIGHTS/test_predictions.csv, the verdict the app gives each test image, which needs these
   checks' flags (write_triage_column).
`image_quality` returns the section (calibration.calibrate merges it); this command alone merges it into the card in
WEIGHTS.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from core.data.classes import CLASS_CODES
from core.decisions.image_quality import CHECK_KINDS, MEASURES, QualityCheck, QualityChecks
from core.analysis.metrics import bootstrap_interval
from core.decisions.model_card import ModelCard, card_from_dict, read_card_json
from core.decisions.ood_levels import REFUSED_LEVELS
from core.decisions.triage import TriageRule
from calibration.card_io import Split, write_sections

TAIL_SHARES = (0.02, 0.05, 0.1)   # candidate shares of validation images a check may flag
# Out of focus: the data hold almost no truly out-of-focus dermoscopy (their least sharp images are mostly smooth
# MoleMax nevi, which the model gets right more often than the rest), so the check's threshold is the lowest tail share
# and its consequence is also measured on BLUR_IMAGES test images blurred by BLUR_SHARE x their width (sigma 3 px at
# 200x150, 9 px at 600x450: clearly out of focus; docs/quality.md has half of it too).
BLUR_SHARE = 0.015
BLUR_IMAGES = 400
MEASURES_DIR = Path("runs/image_quality")
MEASURES_NAME = "measures.csv"
BLURRED_NAME = f"blurred_{BLUR_SHARE}.csv"  # next to the measures
OOS_CSV = Path("runs/oos/predictions.csv")
SAVE_EVERY = 200
# what an image's measures, top class and refusal depend on: the networks and every file, the decision rule and the
# input, the refusal thresholds (not the unusual one, which out_of_source refits)
MEASURED_WITH = ("files", "decision_rule", "preprocessing", "input_size", "segmentation_tta", "dermoscopy_check")


def measures_folder(card: dict, root: Path = MEASURES_DIR) -> Path:
    """The cache folder of the measures taken under this card's networks and rules."""
    used = {name: card[name] for name in MEASURED_WITH}
    used["ood"] = {k: card["ood"]["thresholds"][k] for k in ("chroma", "imagenet_distance")}
    return root / hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()[:12]


def measuring_card(card: dict) -> ModelCard:
    """The card being built, with no quality check yet (the checks are what this step fits from the measures)."""
    return card_from_dict({**card, "image_quality": {"thresholds": {}}})


def evaluation_images(data_dir: Path, split: Split, max_images: int = 0) -> pd.DataFrame:
    """The validation and test images of the split (those of calibration.evaluate's tables with the same max_images)."""
    from calibration.evaluate import read_tables

    tables, _ = read_tables(data_dir, split, max_images)
    return pd.concat([tables[k] for k in ("val", "ham10000_test", "isic2017_test")], ignore_index=True)


def analyse(images: pd.DataFrame, weights: Path, card: ModelCard, cache: Path, max_new: int | None,
            blur: float = 0.0) -> pd.DataFrame:
    """Per image: split, label, lesion, the model's top class, OOD level and every quality measure (cached);
    with `blur`, of the image blurred by cv2.GaussianBlur with sigma = blur x its width."""
    from core.decisions.image_quality import measure_all
    from core.analysis.inference import Analyzer
    from core.io.intake import load_image

    done = pd.read_csv(cache, dtype={"image_id": str}) if cache.exists() else pd.DataFrame(columns=["image_id"])
    todo = images[~images["image_id"].isin(done["image_id"])]
    if max_new is not None:
        todo = todo.head(max_new)
    if len(todo):
        analyzer = Analyzer.load(weights, card=card)
        rows, started = [], time.time()
        for i, image in enumerate(todo.itertuples(index=False)):
            rgb = load_image(Path(image.image_path).read_bytes())
            if blur:
                rgb = cv2.GaussianBlur(rgb, (0, 0), blur * rgb.shape[1])
            result = analyzer.analyze(rgb)
            _, _, box = analyzer.network_images(rgb)
            rows.append({"image_id": image.image_id, "split": image.split, "source": image.source, "label": image.dx,
                         "lesion_id": image.lesion_id if isinstance(image.lesion_id, str) else image.image_id,
                         "pred_shipped": result.label, "ood_level": result.ood_level,
                         **measure_all(rgb, result.mask, box)})
            if len(rows) % SAVE_EVERY == 0 or i == len(todo) - 1:
                done = pd.concat([done, pd.DataFrame(rows)], ignore_index=True) if len(done) else pd.DataFrame(rows)
                rows = []
                cache.parent.mkdir(parents=True, exist_ok=True)
                done.to_csv(cache, index=False)
                print(f"analysed {i + 1}/{len(todo)} ({(i + 1) / (time.time() - started):.1f} img/s)", flush=True)
    return done


def error_excess(flagged: np.ndarray, wrong: np.ndarray, groups) -> dict:
    """Top-1 error of flagged images and of the rest, and the excess (flagged - rest), with grouped bootstrap CIs."""
    def rate(rows, idx):
        chosen = idx[rows[idx]]
        return float(wrong[chosen].mean()) if len(chosen) else None

    def excess(idx):
        a, b = rate(flagged, idx), rate(~flagged, idx)
        return None if a is None or b is None else a - b

    everything = np.arange(len(wrong))
    figures = {"n": int(len(wrong)), "flagged": int(flagged.sum()), "flagged_share": float(flagged.mean())}
    for name, statistic in (("error_flagged", lambda idx: rate(flagged, idx)),
                            ("error_rest", lambda idx: rate(~flagged, idx)), ("error_excess", excess)):
        value = statistic(everything)
        figures[name] = value
        figures[f"{name}_ci95"] = (list(bootstrap_interval(statistic, len(wrong), np.asarray(groups)))
                                   if value is not None else [None, None])
    return figures


def wrong(frame: pd.DataFrame, predictions: str) -> np.ndarray:
    return (frame[predictions] != frame["label"]).to_numpy()


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def fit_check(name: str, val: pd.DataFrame) -> tuple[float, float, dict]:
    """(threshold, tail share, per-share validation figures): the share whose flagged images err most in excess
    (out of focus: the lowest share, see BLUR_SHARE)."""
    kind = CHECK_KINDS[name]
    values = val[kind.measure].to_numpy()
    errors = wrong(val, "pred_shipped")
    tried = {}
    for share in TAIL_SHARES:
        threshold = float(np.quantile(values, share if kind.side == "below" else 1 - share))
        flagged = np.array([QualityCheck(name, threshold).fires({kind.measure: v}) for v in values])
        excess = errors[flagged].mean() - errors[~flagged].mean() if 0 < flagged.sum() < len(flagged) else -np.inf
        tried[str(share)] = {"threshold": threshold, "flagged_share": float(flagged.mean()), "error_excess": float(excess)}
    best = TAIL_SHARES[0] if name == "out_of_focus" else max(TAIL_SHARES, key=lambda s: tried[str(s)]["error_excess"])
    return tried[str(best)]["threshold"], best, tried


def cost_ms(data_dir: Path, checks: QualityChecks) -> dict:
    """Milliseconds QualityChecks.assess takes per image (median, 95th percentile) on HAM10000's full-resolution
    600x450 originals with their reference masks (the field-of-view box is the Analyzer's, computed anyway)."""
    from core.io.intake import load_image
    from core.imaging.preprocess import field_of_view_box

    folder = data_dir / "ham10000" / "fullres"
    times = []
    for path in sorted((folder / "images").glob("*.jpg")):
        rgb = load_image(path.read_bytes())
        mask = cv2.imread(str(folder / "masks" / f"{path.stem}_segmentation.png"), cv2.IMREAD_GRAYSCALE)
        box = field_of_view_box(rgb)
        started = time.perf_counter()
        checks.assess(rgb, mask, box)
        times.append(1000 * (time.perf_counter() - started))
    return {"images": len(times), "median": float(np.median(times)), "p95": float(np.quantile(times, 0.95)),
            "what": "QualityChecks.assess on 600x450 HAM10000 originals (CPU)"}


def measured_tables(data_dir: Path, weights: Path, card: dict, split: Split, max_images: int, max_new: int | None,
                    measures_root: Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Every validation and test image's quality measures and analysis under `card` (refused images left out), and
    the blurred test sample's; None while images are left to analyse."""
    measuring = measuring_card(card)
    folder = measures_folder(card, measures_root)
    images = evaluation_images(data_dir, split, max_images)
    table = analyse(images, weights, measuring, folder / MEASURES_NAME, max_new)
    tests = images[images["split"] == "test"]
    blur_images = min(BLUR_IMAGES, len(tests))
    blur_sample = tests.sample(blur_images, random_state=0)
    blurred = (analyse(blur_sample, weights, measuring, folder / BLURRED_NAME, max_new, BLUR_SHARE)
               if len(table) == len(images) else None)
    if blurred is None or len(blurred) < blur_images:
        print(f"{len(table)}/{len(images)} images and {0 if blurred is None else len(blurred)}/{blur_images} blurred "
              "ones analysed; run again to continue", file=sys.stderr)
        return None
    return table[~table["ood_level"].isin(REFUSED_LEVELS)].reset_index(drop=True), blurred


def with_held_out_predictions(table: pd.DataFrame, oos_csv: Path) -> tuple[pd.DataFrame, str]:
    """The table with calibration.out_of_source's leave-one-source-out predictions when every test image has one,
    and the column the test figures are measured with (pred_loso, else pred_shipped)."""
    if not oos_csv.exists():
        return table, "pred_shipped"
    oos = pd.read_csv(oos_csv, usecols=["image_id", "pred_loso"], dtype={"image_id": str})
    table = table.merge(oos, on="image_id", how="left")
    return table, "pred_loso" if table.loc[table["split"] == "test", "pred_loso"].notna().all() else "pred_shipped"


def check_entry(name: str, table: pd.DataFrame, blurred: pd.DataFrame, held_out: str) -> tuple[dict, float]:
    """One check fitted on validation and measured on test (out of focus also on the blurred sample): its entry of
    the section (kept when an error excess's CI on test is above 0) and its threshold."""
    kind = CHECK_KINDS[name]
    val, test = table[table["split"] == "val"], table[table["split"] == "test"]
    threshold, share, tried = fit_check(name, val)
    fires = lambda frame: np.array([QualityCheck(name, threshold).fires({kind.measure: v})  # noqa: E731
                                    for v in frame[kind.measure]])
    entry = {"measure": kind.measure, "side": kind.side, "threshold": threshold, "tail_share": share,
             "tried": tried, "validation": error_excess(fires(val), wrong(val, "pred_shipped"), val["lesion_id"])}
    for predictions in dict.fromkeys(["pred_shipped", held_out]):
        entry[f"test_{predictions}"] = error_excess(fires(test), wrong(test, predictions), test["lesion_id"])
    evidence = [entry[f"test_{held_out}"]]
    if name == "out_of_focus":
        # the sampled test images as they are and blurred: the check's flag against the model's errors
        both = pd.concat([table[table["image_id"].isin(blurred["image_id"])], blurred], ignore_index=True)
        both = both[~both["ood_level"].isin(REFUSED_LEVELS)]
        entry["test_blurred_pred_shipped"] = error_excess(fires(both), wrong(both, "pred_shipped"), both["lesion_id"])
        pairs = blurred.merge(table, on="image_id", suffixes=("", "_original"))
        entry["blur_paired"] = {
            "images": int(len(pairs)), "error_original": float((pairs["pred_shipped_original"] != pairs["label"]).mean()),
            "error_blurred": float(wrong(pairs, "pred_shipped").mean()),
            "top_class_changed": float((pairs["pred_shipped"] != pairs["pred_shipped_original"]).mean())}
        evidence.append(entry["test_blurred_pred_shipped"])
    entry["kept"] = any(e["error_excess_ci95"][0] is not None and e["error_excess_ci95"][0] > 0 for e in evidence)
    print(f"{name}: threshold {threshold:.4g} ({share:.0%} of val); " + "; ".join(
        f"flagged {e['flagged']}/{e['n']}: error {_rate(e['error_flagged'])} vs rest {_rate(e['error_rest'])}, "
        f"excess CI [{_rate(e['error_excess_ci95'][0])}, {_rate(e['error_excess_ci95'][1])}]" for e in evidence)
        + f" -> {'kept' if entry['kept'] else 'dropped'}", flush=True)
    return entry, threshold


def image_quality(data_dir: Path, weights: Path, card: dict, split: Split, oos_csv: Path = OOS_CSV,
                  max_images: int = 0, max_new: int | None = None, measures_root: Path = MEASURES_DIR) -> dict | None:
    """The `image_quality` section fitted under `card` (the sections of the earlier steps), or None while images are
    left to analyse (max_new: this call analyses at most that many; run again to continue)."""
    started = time.time()
    measured = measured_tables(data_dir, weights, card, split, max_images, max_new, measures_root)
    if measured is None:
        return None
    table, held_out = with_held_out_predictions(measured[0], oos_csv)
    checks, thresholds = {}, {}
    for name in CHECK_KINDS:
        checks[name], threshold = check_entry(name, table, measured[1], held_out)
        if checks[name]["kept"]:
            thresholds[name] = threshold

    cost = cost_ms(data_dir, QualityChecks([QualityCheck(n, t) for n, t in thresholds.items()]))
    print(f"cost per image: median {cost['median']:.2f} ms, p95 {cost['p95']:.2f} ms", flush=True)
    return {
        "thresholds": thresholds, "checks": checks, "held_out_predictions": held_out, "cost_ms": cost,
        "n_images": {"validation": int((table["split"] == "val").sum()), "test": int((table["split"] == "test").sum())},
        "measures": {name: f.__doc__.split(":")[0].strip() if f.__doc__ else name for name, f in MEASURES.items()},
        "method": ("measures on the field of view at core.decisions.image_quality.WORKING_SIZE; threshold: the validation "
                   f"quantile among tail shares {list(TAIL_SHARES)} with the largest top-1 error excess of flagged "
                   "images (out of focus: the lowest share); consequence: test-split error of flagged images vs the "
                   f"rest with lesion-grouped bootstrap 95 % CIs ({held_out}; out of focus also on {BLUR_IMAGES} test "
                   f"images with and without a Gaussian blur of sigma {BLUR_SHARE} x width); kept only if the excess "
                   "CI's lower bound is above 0"),
        "seconds": round(time.time() - started, 1)}


def write_triage_column(weights: Path, card: ModelCard, measures_root: Path = MEASURES_DIR) -> None:
    """The `triage` column of WEIGHTS/test_predictions.csv: each test image's verdict as the app gives it, i.e. with
    the card's image-quality checks' flags (from the measures this step took under the card's networks and rules)."""
    path = weights / "test_predictions.csv"
    table = pd.read_csv(path, keep_default_na=False, dtype={"image_id": str})
    measures_csv = measures_folder(card.raw, measures_root) / MEASURES_NAME
    measures = (pd.read_csv(measures_csv, dtype={"image_id": str}).drop_duplicates("image_id").set_index("image_id")
                if measures_csv.exists() else pd.DataFrame())
    missing = sorted(set(table["image_id"]) - set(measures.index))
    if missing:
        raise FileNotFoundError(f"{measures_csv}: no quality measures of {len(missing)} test image(s) (e.g. "
                                f"{missing[0]}); run `python -m calibration.fit_image_quality` to take them")
    checks = QualityChecks.from_card(card).checks
    rows = measures.loc[table["image_id"]]
    flags = np.array([any(check.fires(m) for check in checks) for m in rows.to_dict("records")], dtype=bool)
    probs = table[[f"p_{code}" for code in CLASS_CODES]].to_numpy(float)
    table["triage"] = TriageRule.from_card(card).levels(probs, table["uncertainty_level"], table["ood_level"], flags)
    table.to_csv(path, index=False)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--split-file", default="", help="default: the split of the card in WEIGHTS")
    parser.add_argument("--oos", type=Path, default=OOS_CSV, help="per-image leave-one-source-out predictions")
    parser.add_argument("--max-new", type=int, default=None, help="analyse at most this many uncached images now")
    args = parser.parse_args(argv)
    card = read_card_json(args.weights)
    section = image_quality(args.data_dir, args.weights, card, Split.of_args(args.split_file, args.weights), args.oos,
                            max_new=args.max_new)
    if section is None:
        return {}
    write_triage_column(args.weights, write_sections(args.weights, {"image_quality": section}))
    return section


if __name__ == "__main__":
    main()
