"""Opening a `run.sh batch` result (Parquet, core.batch.batch_results) on the Batch and Evaluate pages: the path and labels
inputs, and the result's rows in the shape each page already shows (nothing is re-analysed)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core.batch.batch_results import LabelsError, ResultError, evaluation_of, labels_beside, read_labels, read_result
from ui.data_folder import resolve_data_dir

MAX_TABLE_ROWS = 5000  # the Batch page's table (thumbnails aside, a row per image); summary.json covers all


def open_result_ui(key: str) -> tuple[pd.DataFrame, pd.DataFrame | None, str] | None:
    """Path and optional labels inputs with an Open button; (rows, labels or None, where) once opened, else None.
    Labels: the CSV typed here, else the labels.csv the run was given (--labels). Errors are shown in words."""
    left, middle, right = st.columns([3, 2, 1], vertical_alignment="bottom")
    where = left.text_input("Batch result (a `run.sh batch` output folder or a Parquet file, on the server)",
                            key=f"{key}_result_path", placeholder="/data/archive_results")
    labels_path = middle.text_input("Labels CSV (optional: image or image_id, dx, lesion_id)", key=f"{key}_labels")
    if not right.button("Open result", key=f"{key}_result_open", disabled=not where.strip()):
        return None
    path = _server_path(where)
    try:
        table = read_result(path)
        labels_file = _server_path(labels_path) if labels_path.strip() else labels_beside(path)
        labels = read_labels(labels_file) if labels_file else None
    except (ResultError, LabelsError) as exc:
        st.error(f"Cannot open the result: {exc}", icon=":material/error:")
        return None
    return table, labels, str(path)


def _server_path(text: str) -> Path:
    """A folder the data-folder rules resolve (relative to the data folder), else the path as typed."""
    return resolve_data_dir(text) or Path(text.strip()).expanduser()


def batch_result_ui() -> pd.DataFrame | None:
    """The Batch page's block: a result's first MAX_TABLE_ROWS rows as its table (ui.batch_table's columns), true
    labels where given; None until one is opened."""
    opened = open_result_ui("batch")
    if opened is None:
        return None
    result, labels, _ = opened
    shown = result.head(MAX_TABLE_ROWS)
    if len(result) > len(shown):
        st.info(f"The table shows the first {len(shown):,} of {len(result):,} images; the run's summary.json covers "
                "them all.")
    true_dx = shown["image"].map(dict(zip(labels["image"], labels["dx"]))) if labels is not None else None
    return shown.assign(thumbnail=None, file=shown["source"] if "source" in shown else shown["image"],
                        true_dx=true_dx, uncertainty_text=shown["uncertainty_level"].replace("", None))


def evaluation_result_ui() -> dict | None:
    """The Evaluate page's block: its run state (a finished evaluation of the result's labelled rows, through
    core.analysis.folder_evaluation) once a result with labels is opened; None otherwise."""
    opened = open_result_ui("eval")
    if opened is None:
        return None
    result, labels, where = opened
    if labels is None:
        st.error("Give a labels CSV (image or image_id, dx): the run had no --labels.", icon=":material/error:")
        return None
    evaluation = evaluation_of(result, labels)
    paths = result["path"] if "path" in result else result["image"]
    manifest = pd.DataFrame({"image_id": result["image"], "image_path": paths})
    manifest = manifest[manifest["image_id"].isin(labels["image"])]
    return {"folder": where, "manifest": manifest, "rows": [], "failures": evaluation.failures, "done": len(manifest),
            "cancel": False, "evaluation": evaluation}
