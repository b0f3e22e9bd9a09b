"""Reading a batch engine result back (core.batch.batch_engine): its rows, an optional labels CSV, and the evaluation of
the rows against the labels through core.analysis.folder_evaluation (the figures of the Evaluate page and calibration.evaluate).

A result is a folder with manifest.json (only the shards its plan names are read, so stale shards of an older run
into the same folder never count twice), a folder of Parquet files, or one Parquet file (a shard).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.classes import CLASS_CODES
from core.analysis.folder_evaluation import FolderEvaluation, assemble
from core.batch.batch_shards import csv_strings
from core.io.intake import FILE_EXTENSIONS

MANIFEST = "manifest.json"   # core.batch.batch_engine writes it
LABELS = "labels.csv"


class ResultError(ValueError):
    """Not a batch result (no such path, no shard, unreadable Parquet); the message says which and why."""


class LabelsError(ValueError):
    """A labels CSV without the needed columns or with an unknown class; the message names the file and row."""


def read_result(path: str | os.PathLike) -> pd.DataFrame:
    """Every row of a result (a folder with manifest.json, a folder of Parquet files, or one Parquet file), its
    typed columns in the predict CSV's strings (core.batch.batch_shards.csv_strings: what the pages show)."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif (path / MANIFEST).is_file():
        manifest = json.loads((path / MANIFEST).read_text())
        files = [path / "shards" / s["file"] for s in manifest["shards"]]
        files = [f for f in files if f.exists()]  # an unfinished run: the shards written so far
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
    else:
        raise ResultError(f"{path}: no such file or folder")
    if not files:
        raise ResultError(f"{path}: no Parquet shard in it (is it a `run.sh batch` output folder?)")
    try:
        table = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds for a file that is not Parquet
        raise ResultError(f"{path}: not a readable Parquet result ({exc})") from None
    missing = {"image", "pred", "error", "ood_level", "refer"} - set(table.columns)
    if missing:
        raise ResultError(f"{path}: not a batch result (no column {', '.join(sorted(missing))})")
    return csv_strings(table)


def labels_beside(path: str | os.PathLike) -> Path | None:
    """The labels.csv the engine copied into a result folder (--labels), if any."""
    candidate = Path(path) / LABELS
    return candidate if candidate.is_file() else None


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """image (file name without extension), dx, lesion_id (the image when absent) from a CSV with `image` or
    `image_id`, `dx` and optionally `lesion_id` (a HAM10000 metadata file works as is)."""
    try:
        table = pd.read_csv(path, dtype=str).fillna("")
    except Exception as exc:  # noqa: BLE001
        raise LabelsError(f"{path}: not a readable CSV ({exc})") from None
    key = "image" if "image" in table.columns else "image_id" if "image_id" in table.columns else None
    if key is None or "dx" not in table.columns:
        raise LabelsError(f"{Path(path).name}: needs the columns image (or image_id) and dx")
    images = [Path(v).stem if Path(v).suffix.lower().lstrip(".") in FILE_EXTENSIONS else v for v in table[key]]
    dx = table["dx"].str.strip().str.lower()
    bad = np.flatnonzero(~dx.isin(CLASS_CODES))
    if len(bad):
        row = int(bad[0])
        raise LabelsError(f"{Path(path).name}, row {row + 2}: dx {table['dx'].iloc[row]!r} is not one of "
                          f"{', '.join(CLASS_CODES)}")
    lesion = table["lesion_id"] if "lesion_id" in table.columns else pd.Series([""] * len(table))
    return pd.DataFrame({"image": images, "dx": dx.to_numpy(),
                         "lesion_id": [l or i for l, i in zip(lesion, images)]}).drop_duplicates("image")


def evaluation_of(result: pd.DataFrame, labels: str | os.PathLike | pd.DataFrame) -> FolderEvaluation:
    """The Evaluate page's evaluation of a result's labelled rows (unlabelled images are left out; error rows are
    its failures)."""
    labels = labels if isinstance(labels, pd.DataFrame) else read_labels(labels)
    rows = result.merge(labels, on="image", how="inner")
    failed = rows[rows["error"] != ""]
    done = rows[rows["error"] == ""]
    diagnosed = done["pred"] != ""
    numbers = {c: pd.to_numeric(done[c], errors="coerce") for c in [f"p_{k}" for k in CLASS_CODES] + ["mel_score"]}
    predictions = pd.DataFrame({"image_id": done["image"], "lesion_id": done["lesion_id"], "dx": done["dx"],
                                "pred": done["pred"], **numbers, "refer": done["refer"].where(diagnosed, ""),
                                "triage": done["triage"], "uncertainty_level": done["uncertainty_level"],
                                "ood_level": done["ood_level"], "ood_reason": done["ood_reason"],
                                "dice": np.nan, "jaccard": np.nan})
    versions = sorted(set(done["model_version"]) - {""})
    return assemble(predictions.to_dict("records"), list(zip(failed["image"], failed["error"])), False,
                    ", ".join(versions))

