"""Batch prediction from the command line.

    python -m core.analysis.predict PATH... --out OUT_DIR [--weights DIR] [--metadata FILE.csv]

PATHs are image files or folders (the formats of core.io.intake.FILE_EXTENSIONS; folders are not recursed). Writes
OUT_DIR/predictions.csv and OUT_DIR/masks/<image>.png (0/255, the input image's size). Columns: image, pred,
p_<class>..., mel_score, refer (yes / no at the model card's melanoma referral threshold), triage (the verdict of
core.decisions.triage: not_assessed / refer / review / no_referral), prediction_set (the conformal set, classes joined by
'|'), uncertainty_level (low /
moderate / high), ood_level (in / unusual / clinical_photo / not_skin), ood_reason, quality (the image-quality checks
that fired, core.decisions.image_quality names joined by '|'), model_version, error. An image that is not
dermoscopy (a clinical photo, not skin) gets no diagnosis: empty pred, probabilities, mel_score and refer. A file that cannot be read gets its
error row and the rest go on. --metadata: a CSV with columns image (file name, with or without extension) and any of
age, sex, site (core.data.patient_context); the values are checked, copied into the output rows and passed to the analysis
(they change the probabilities only when the model card's context head is in use: its patient-context comparison).
DICOM files (.dcm) without a --metadata row take age, sex and site from their tags (core.io.dicom_input); a
multi-frame DICOM gives one row (and mask) per frame, named <file name>_frame<k>.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from core.data.classes import CLASS_CODES
from core.analysis.inference import AnalysisResult, Analyzer
from core.decisions.model_card import ModelCardError
from core.io.weights_io import DEFAULT_WEIGHTS_DIR, WeightsIntegrityError
from core.io.dicom_input import file_header
from core.io.intake import FILE_EXTENSIONS, MAX_BYTES, ImageRejected, load_frames, load_image_file
from core.data.patient_context import ContextError, PatientContext, read_context_csv

IMAGE_SUFFIXES = {f".{extension}" for extension in FILE_EXTENSIONS}
COLUMNS = ["image", "age", "sex", "site", "pred", *[f"p_{c}" for c in CLASS_CODES], "mel_score", "refer", "triage", "prediction_set",
           "uncertainty_level", "ood_level", "ood_reason", "quality", "model_version", "error"]
DIAGNOSIS_COLUMNS = ("pred", *[f"p_{c}" for c in CLASS_CODES], "mel_score", "refer", "prediction_set")


def blank_row(image: str, context: PatientContext = PatientContext()) -> dict:
    """A CSV row with every column empty but the image name and its patient context (shared with the Batch page)."""
    return {column: "" for column in COLUMNS} | {
        "image": image, "age": "" if context.age is None else f"{context.age:g}", "sex": context.sex or "",
        "site": context.site or ""}


def result_row(result, version: str, refer: bool | None = None, triage: str | None = None) -> dict:
    """The CSV fields of one analysis (shared by this CLI and the Batch page); no diagnosis for non-dermoscopy.
    `refer`, `triage`: the melanoma referral and the verdict at a session's own threshold (the Batch page); default:
    the card's (result.refer, result.triage)."""
    refer = result.refer if refer is None else refer
    triage = (result.triage.level if result.triage is not None else "") if triage is None else triage
    row = {"pred": result.label, **{f"p_{c}": f"{p:.5f}" for c, p in result.probs.items()},
           "mel_score": f"{result.mel_score:.5f}", "refer": "yes" if refer else "no", "triage": triage,
           "prediction_set": "|".join(result.prediction_set),
           "uncertainty_level": result.uncertainty_level, "ood_level": result.ood_level,
           "ood_reason": result.ood_reason, "quality": "|".join(result.quality), "model_version": version}
    if not result.diagnosis_shown:
        row.update({column: "" for column in DIAGNOSIS_COLUMNS})
        row["uncertainty_level"] = ""
    return row


def collect_paths(inputs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(path)  # a missing or odd file still gets its own error row
    return paths


def analyse_file(analyzer: Analyzer, path: Path, context: PatientContext = PatientContext()) -> tuple[dict, AnalysisResult | None]:
    """One file's CSV row and its analysis (None when the file was rejected or the analysis failed: the row's error
    says why); a multi-frame DICOM: its first frame (analyse_frames, which the archive batch engine uses, gives every
    frame)."""
    try:
        rgb = load_image_file(path)
        if not context.given:
            context = file_header(path)[1]  # a DICOM's tags (header only: the pixels were decoded above)
    except ImageRejected as exc:
        return blank_row(path.stem, context) | {"error": str(exc)}, None
    except Exception as exc:  # one bad file must never stop the batch
        return blank_row(path.stem, context) | {"error": f"analysis failed: {exc}"}, None
    return analyse_image(analyzer, rgb, path.stem, context)


def analyse_image(analyzer: Analyzer, rgb, name: str, context: PatientContext) -> tuple[dict, AnalysisResult | None]:
    """The CSV row named `name` and the analysis of one decoded image."""
    row = blank_row(name, context)
    try:
        result = analyzer.analyze(rgb, context=context)
    except Exception as exc:  # one bad image must never stop the batch
        row["error"] = f"analysis failed: {exc}"
        return row, None
    row.update(result_row(result, analyzer.card.model_version))
    return row, result


def frame_image_name(stem: str, k: int) -> str:
    """The image name of frame k (from 1) of a multi-frame file: every surface (CLI, Batch page, archive engine)."""
    return f"{stem}_frame{k}"


def analyse_frames(analyzer: Analyzer, path: Path, context: PatientContext = PatientContext()) -> list[tuple[dict, AnalysisResult | None]]:
    """Every frame of a multi-frame DICOM file as its own row, named <stem>_frame<k> (k from 1), read once; any
    other file: its one row (analyse_file)."""
    if file_header(path)[0] == 1:
        return [analyse_file(analyzer, path, context)]
    try:
        with open(path, "rb") as handle:
            frames, tags = load_frames(handle.read(MAX_BYTES + 1), path.name)
    except ImageRejected as exc:
        return [(blank_row(path.stem, context) | {"error": str(exc)}, None)]
    except OSError as exc:
        return [(blank_row(path.stem, context) | {"error": f"Cannot read the file ({exc})"}, None)]
    context = context if context.given else tags
    return [analyse_image(analyzer, rgb, frame_image_name(path.stem, k), context) for k, rgb in enumerate(frames, 1)]


def predict_one(analyzer: Analyzer, path: Path, mask_dir: Path, context: PatientContext = PatientContext()) -> dict:
    row, result = analyse_file(analyzer, path, context)
    if result is not None:
        cv2.imwrite(str(mask_dir / f"{path.stem}.png"), result.mask)
    return row


def predict_file(analyzer: Analyzer, path: Path, mask_dir: Path, context: PatientContext = PatientContext()) -> list[dict]:
    """The rows of one file (one per frame of a multi-frame DICOM), each analysed image's mask written beside."""
    rows = []
    for row, result in analyse_frames(analyzer, path, context):
        if result is not None:
            cv2.imwrite(str(mask_dir / f"{row['image']}.png"), result.mask)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS_DIR))
    parser.add_argument("--metadata", default="", help="CSV: image, age, sex, site (each optional but image)")
    args = parser.parse_args(argv)
    try:
        contexts = read_context_csv(args.metadata) if args.metadata else {}
    except ContextError as exc:
        parser.error(str(exc))

    paths = collect_paths(args.paths)
    if not paths:
        parser.error("no image files found in the given paths")
    out = Path(args.out)
    mask_dir = out / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    try:
        analyzer = Analyzer.load(args.weights)
    except (ModelCardError, WeightsIntegrityError) as exc:  # a card lacking a rule, an altered weight file
        parser.error(str(exc))
    rows = [row for p in tqdm(paths, desc="analysing", unit="file", file=sys.stderr)
            for row in predict_file(analyzer, p, mask_dir, contexts.get(p.stem, PatientContext()))]
    with open(out / "predictions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    failed = sum(1 for r in rows if r["error"])
    print(f"{len(rows) - failed} analysed, {failed} failed -> {out / 'predictions.csv'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
