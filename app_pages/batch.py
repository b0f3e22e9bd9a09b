"""Batch analysis: many images -> one table (thumbnail, prediction, probabilities, OOD, measurements) -> CSV."""
from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import streamlit as st

from core.classes import CLASS_CODES
from core.intake import FILE_EXTENSIONS
from ui.analyzers import ModelUnavailable, pool
from ui.batch_table import PROB_COLUMNS, analyse_all
from ui.data_folder import available_sources, current_data_dir
from ui.datasets import test_split
from ui.formatting import DISCLAIMER

MAX_FILES = 200


def results_ui(table: pd.DataFrame) -> None:
    ok = table["error"] == ""
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Images", len(table))
    c2.metric("Analysed", int(ok.sum()))
    c3.metric("Rejected / failed", int((~ok).sum()))
    c4.metric("Flagged out of distribution", int(table["ood"].fillna(False).astype(bool).sum()))
    labelled = table["true_dx"].notna()
    if labelled.any():
        done = table[ok & labelled]
        st.caption(f"Dataset examples: prediction agrees with the true label for "
                   f"{int((done['pred_code'] == done['true_dx']).sum())} of {len(done)}.")
    shown = table.drop(columns=["pred_code", "error"] + ([] if labelled.any() else ["true_dx"]))
    shown.insert(2, "status", ["✓ analysed" if not e else f"✗ {e}" for e in table["error"]])
    for column in PROB_COLUMNS + ["probability", "malignant_total"]:
        shown[column] = shown[column].astype(float) * 100
    # a ticked grey checkbox is easy to miss: spell the out-of-distribution flag out
    shown["ood"] = [None if flag is None or pd.isna(flag) else ("⚠ yes" if flag else "no") for flag in table["ood"]]
    # measurements next to the prediction, the 7 per-class probabilities last (they need horizontal scrolling)
    shown = shown[[c for c in shown.columns if c not in PROB_COLUMNS] + PROB_COLUMNS]
    st.dataframe(shown, hide_index=True, key="batch_table", row_height=60, placeholder="—", column_config={
        "thumbnail": st.column_config.ImageColumn("Image", width="small"),
        "status": st.column_config.TextColumn("Status", width="medium"),
        "file": st.column_config.TextColumn("File"),
        "true_dx": st.column_config.TextColumn("True label"),
        "prediction": st.column_config.TextColumn("Prediction", help="▲ = malignant class"),
        "probability": st.column_config.ProgressColumn("Probability", min_value=0.0, max_value=100.0, format="%.1f%%"),
        "malignant_total": st.column_config.NumberColumn("All malignant", format="%.1f%%",
                                                         help="Sum of akiec, bcc and mel probabilities"),
        "uncertainty": st.column_config.NumberColumn("Uncertainty", format="%.2f"),
        "ood": st.column_config.TextColumn("OOD", help="Out of distribution. ⚠ = the image looks unlike the "
                                           "dermoscopic training data; treat its prediction with caution"),
        **{p: st.column_config.NumberColumn(p.replace("p_", "p "), format="%.1f%%") for p in PROB_COLUMNS},
        "area_px": st.column_config.NumberColumn("Area (px)", format="%d"),
        "max_diameter_px": st.column_config.NumberColumn("Max diameter (px)", format="%.0f"),
        "asymmetry": st.column_config.NumberColumn("Mirror asymmetry", format="percent",
                                                   help="Share of the lesion area outside its mirror image"),
        "border_irregularity": st.column_config.NumberColumn("Border irregularity", format="%.2f",
                                                             help="perimeter² / (4π × area); 1 = circle"),
        "colours": st.column_config.TextColumn("Colours"),
    })
    failed = table[~ok]
    if len(failed):
        st.warning("**Not analysed** (the rest of the batch was):\n" + "\n".join(
            f"- `{row.file}`: {row.error}" for row in failed.itertuples(index=False)), icon=":material/block:")
    st.download_button("Download results (CSV)", table.drop(columns=["thumbnail"]).to_csv(index=False).encode("utf-8"),
                       file_name="lesionlens_batch.csv", mime="text/csv", key="dl_batch_csv", type="primary",
                       icon=":material/download:")


def examples_ui(data_dir: Path | None) -> list | None:
    """Random held-out test images (one per class, then any) — a demo of the table without uploads."""
    if data_dir is None or not available_sources(data_dir):
        return None
    box = st.expander("No images at hand? Analyse random test-split dataset images", icon=":material/casino:")
    c1, c2 = box.columns([1, 3], vertical_alignment="bottom")
    n = int(c1.number_input("Dataset images", 1, 50, 7, key="batch_n"))
    if not c2.button("Analyse random dataset images", key="batch_examples"):
        return None
    table = test_split(data_dir, tuple(available_sources(data_dir)))
    if (table["source"] == "ham10000").any():
        table = table[table["source"] == "ham10000"]
    rng = random.Random()
    picks = [table[table["dx"] == c].iloc[rng.randrange((table["dx"] == c).sum())] for c in CLASS_CODES
             if (table["dx"] == c).any()][:n]
    picks += [table.iloc[rng.randrange(len(table))] for _ in range(n - len(picks))]
    return [(row["image_id"], (lambda p=row["image_path"]: Path(p).read_bytes()), row["dx"]) for row in picks]


def run_ui(items: list) -> pd.DataFrame:
    """Analyse `items` with a progress bar; returns the result table."""
    progress = st.progress(0.0, text="Starting…")
    table = analyse_all(items, lambda i, name: progress.progress(
        i / len(items), text=f"Analysing {name} ({i + 1}/{len(items)})"))
    progress.progress(1.0, text=f"Done: {len(items)} image(s)")
    return table


def batch_page() -> None:
    st.title("Batch analysis")
    st.caption(DISCLAIMER)
    uploads = st.file_uploader("Dermoscopic images", type=list(FILE_EXTENSIONS), accept_multiple_files=True,
                               key="batch_upload", help=f"Up to {MAX_FILES} files; analysed in memory, never stored.")
    items = None
    if uploads:
        if len(uploads) > MAX_FILES:
            st.warning(f"{len(uploads)} files selected: only the first {MAX_FILES} are analysed.")
        if st.button(f"Analyse {min(len(uploads), MAX_FILES)} image(s)", type="primary", key="batch_run"):
            items = [(f.name, f.getvalue, "") for f in uploads[:MAX_FILES]]
    items = items or examples_ui(current_data_dir())
    if items:
        try:
            pool().wait()
        except ModelUnavailable as exc:
            st.error(str(exc))
            return
        st.session_state["batch_result"] = run_ui(items)
    result = st.session_state.get("batch_result")
    if result is not None and len(result):
        results_ui(result)
    elif not uploads:
        st.info("Upload images (or pick random dataset images) to analyse them together.")


batch_page()
