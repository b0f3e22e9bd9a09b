"""Batch analysis: many images (with an optional patient-context CSV) -> one table (thumbnail, prediction, melanoma
referral, uncertainty in words, OOD level and reason, measurements) -> the predict CLI's CSV."""
from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import streamlit as st

from core.data.classes import CLASS_CODES
from core.io.intake import FILE_EXTENSIONS
from core.decisions.ood_levels import REFUSED_LEVELS
from core.decisions.triage import HEADLINES
from ui.analyzers import ModelUnavailable, pool
from ui.audit_log import record_batch
from ui.batch_result_view import batch_result_ui
from ui.batch_table import analyse_all
from ui.data_folder import available_sources, current_data_dir
from ui.datasets import test_split
from ui.formatting import DISCLAIMER, OOD_WORDS, class_label_marked, context_use_text
from ui.model_files import model_card
from ui.referral import rule, session_threshold, threshold_text

MAX_FILES = 200
PROB_COLUMNS = [f"p_{c}" for c in CLASS_CODES]


def status_of(row) -> str:
    if row.error:
        return f"✗ {row.error}"
    return {"clinical_photo": "⚠ clinical (camera) photo: no automated assessment, review this lesion yourself",
            "not_skin": "⚠ not a skin image: no automated assessment, review this lesion yourself",
            "unusual": "⚠ unusual image: diagnosis less reliable",
            "maybe_clinical_photo": "⚠ may be a camera photo: diagnosis less reliable"}.get(
        row.ood_level, f"⚠ image quality ({row.quality.replace('|', ', ').replace('_', ' ')}): diagnosis less reliable"
        if row.quality else "✓ analysed")


def summary_ui(table: pd.DataFrame, threshold: float | None) -> None:
    ok = table["error"] == ""
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("Images", len(table))
    c2.metric("Analysed", int(ok.sum()))
    c3.metric("Rejected / failed", int((~ok).sum()))
    c4.metric("No automated assessment", int(table["ood_level"].isin(REFUSED_LEVELS).sum()),
              help="Clinical (camera) photos and images that are not skin: no diagnosis. Review these lesions "
                   "yourself: a refused image is not a benign one.")
    c5.metric("Refer (triage)", int((table["triage"] == "refer").sum()),
              help="Images whose verdict is Refer: a malignant class reaches its referral threshold. "
                   f"Melanoma alone: {int((table['refer'] == 'yes').sum())}; expert review advised: "
                   f"{int((table['triage'] == 'review').sum())}; no referral indicated (clear nevi): "
                   f"{int((table['triage'] == 'no_referral').sum())}.")
    card_threshold = rule().threshold
    used = (f"your session's threshold {threshold_text(threshold)}; the model card's is "
            f"{threshold_text(card_threshold)}" if threshold is not None
            else f"the model card's threshold {threshold_text(card_threshold)}")
    st.caption(f"Referral: melanoma score at or above {used}. Change it on Model performance → Melanoma referral.")
    if threshold != session_threshold():
        st.warning("The session's referral threshold changed after this batch was analysed: analyse it again to apply "
                   "it.", icon=":material/tune:")
    labelled = table["true_dx"].notna()
    if labelled.any():
        done = table[labelled & (table["pred"] != "")]
        st.caption(f"Dataset examples: prediction agrees with the true label for "
                   f"{int((done['pred'] == done['true_dx']).sum())} of {len(done)}.")


def results_ui(table: pd.DataFrame, threshold: float | None) -> None:
    summary_ui(table, threshold)
    labelled = table["true_dx"].notna().any()
    has_context = (table[["age", "sex", "site"]] != "").any().any()
    diagnosed = table["pred"] != ""
    shown = pd.DataFrame({
        "thumbnail": table["thumbnail"], "file": table["file"],
        "status": [status_of(row) for row in table.itertuples(index=False)],
        **({"true_dx": table["true_dx"]} if labelled else {}),
        **({c: table[c].replace("", None) for c in ("age", "sex", "site")} if has_context else {}),
        "prediction": [class_label_marked(p) if p else None for p in table["pred"]],
        "probability": [100 * float(row[f"p_{row['pred']}"]) if row["pred"] else None for _, row in table.iterrows()],
        "triage": [HEADLINES.get(v) for v in table["triage"]],
        "refer": table["refer"].replace("", None), "mel_score": pd.to_numeric(table["mel_score"], errors="coerce"),
        "uncertainty_text": table["uncertainty_text"],
        "ood": [OOD_WORDS.get(level) for level in table["ood_level"]], "ood_reason": table["ood_reason"].replace("", None),
        **{c: table[c] for c in ("area_px", "max_diameter_px", "asymmetry", "border_irregularity", "colours")},
        **{p: pd.to_numeric(table[p], errors="coerce").where(diagnosed) * 100 for p in PROB_COLUMNS},
    })
    st.dataframe(shown, hide_index=True, key="batch_table", row_height=60, placeholder="—", column_config={
        "thumbnail": st.column_config.ImageColumn("Image", width="small"),
        "status": st.column_config.TextColumn("Status", width="medium"),
        "file": st.column_config.TextColumn("File"),
        "true_dx": st.column_config.TextColumn("True label"),
        "age": st.column_config.TextColumn("Age"), "sex": st.column_config.TextColumn("Sex"),
        "site": st.column_config.TextColumn("Site"),
        "prediction": st.column_config.TextColumn("Prediction", help="▲ = malignant class"),
        "probability": st.column_config.ProgressColumn("Probability", min_value=0.0, max_value=100.0, format="%.1f%%"),
        "triage": st.column_config.TextColumn("Verdict", help="The triage verdict (the more severe first): Refer (a "
                                              "malignant class reaches its threshold), Expert review (not a clear "
                                              "nevus, or uncertain or unusual), No referral indicated (a clear "
                                              "nevus), No automated assessment (not "
                                              "dermoscopy: review the lesion yourself)"),
        "refer": st.column_config.TextColumn("Melanoma rule", help="yes: melanoma score above the referral "
                                             "threshold: consider dermoscopic follow-up or excision"),
        "mel_score": st.column_config.NumberColumn("Melanoma score", format="%.3f"),
        "uncertainty_text": st.column_config.TextColumn("Uncertainty", width="large"),
        "ood": st.column_config.TextColumn("Out of distribution"),
        "ood_reason": st.column_config.TextColumn("Why", width="large"),
        **{p: st.column_config.NumberColumn(p.replace("p_", "p "), format="%.1f%%") for p in PROB_COLUMNS},
        "area_px": st.column_config.NumberColumn("Area (px)", format="%d"),
        "max_diameter_px": st.column_config.NumberColumn("Max diameter (px)", format="%.0f"),
        "asymmetry": st.column_config.NumberColumn("Mirror asymmetry", format="percent",
                                                   help="Share of the lesion area outside its mirror image"),
        "border_irregularity": st.column_config.NumberColumn("Border irregularity", format="%.2f",
                                                             help="perimeter² / (4π × area); 1 = circle"),
        "colours": st.column_config.TextColumn("Colours"),
    })
    failed = table[table["error"] != ""]
    if len(failed):
        st.warning("**Not analysed** (the rest of the batch was):\n" + "\n".join(
            f"- `{row.file}`: {row.error}" for row in failed.itertuples(index=False)), icon=":material/block:")
    st.download_button("Download results (CSV)", csv_bytes(table, threshold), file_name="lesionlens_batch.csv",
                       mime="text/csv", key="dl_batch_csv", type="primary", icon=":material/download:")


def csv_bytes(table: pd.DataFrame, threshold: float | None) -> bytes:
    """The predict CLI's columns (core.analysis.predict.COLUMNS), the referral threshold applied, and the true label of
    dataset examples."""
    from core.analysis.predict import COLUMNS

    out = table[COLUMNS].assign(referral_threshold=threshold_text(rule().threshold if threshold is None else threshold))
    if table["true_dx"].notna().any():
        out["true_dx"] = table["true_dx"]
    return out.to_csv(index=False).encode("utf-8")


def context_ui() -> dict | None:
    """The optional metadata CSV (image, age, sex, site) -> {image name without extension: PatientContext}; None when
    it is invalid (the error, naming the row, is shown)."""
    from core.data.patient_context import ContextError, parse_context_csv

    upload = st.file_uploader("Patient context (optional CSV: image, age, sex, site)", type=["csv"],
                              key="batch_metadata", help="One row per image file (name with or without "
                              "extension); any of age, sex, site may be empty. Read in memory, never stored.")
    st.caption(context_use_text(model_card()))
    if upload is None:
        return {}
    try:
        return parse_context_csv(upload.getvalue().decode("utf-8-sig").splitlines(), upload.name)
    except (ContextError, UnicodeDecodeError) as exc:
        st.error(f"Patient context not read: {exc}", icon=":material/error:")
        return None


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


def run_ui(items: list, contexts: dict) -> pd.DataFrame:
    """Analyse `items` with a progress bar; returns the result table."""
    progress = st.progress(0.0, text="Starting…")
    table = analyse_all(items, contexts, lambda i, name: progress.progress(
        i / len(items), text=f"Analysing {name} ({i + 1}/{len(items)})"))
    progress.progress(1.0, text=f"Done: {len(items)} file(s), {len(table)} image(s)" if len(table) != len(items)
                      else f"Done: {len(items)} image(s)")
    return table


def batch_page() -> None:
    st.title("Batch analysis")
    st.caption(DISCLAIMER)
    uploads = st.file_uploader("Dermoscopic images", type=list(FILE_EXTENSIONS), accept_multiple_files=True,
                               key="batch_upload", help=f"Up to {MAX_FILES} files; analysed in memory, never stored.")
    contexts = context_ui()
    items = None
    if uploads:
        if len(uploads) > MAX_FILES:
            st.warning(f"{len(uploads)} files selected: only the first {MAX_FILES} are analysed.")
        if st.button(f"Analyse {min(len(uploads), MAX_FILES)} image(s)", type="primary", key="batch_run",
                     disabled=contexts is None):
            items = [(f.name, f.getvalue, "") for f in uploads[:MAX_FILES]]
    items = items or examples_ui(current_data_dir())
    with st.expander("Open an archive result (`run.sh batch` Parquet output)", icon=":material/folder_open:"):
        opened = batch_result_ui()  # ui.batch_result_view: its rows as this table, nothing re-analysed
    if opened is not None:
        st.session_state["batch_result"] = (opened, None)
    if items and contexts is not None:
        try:
            pool().wait()
        except ModelUnavailable as exc:
            st.error(str(exc))
            return
        st.session_state["batch_result"] = (run_ui(items, contexts), session_threshold())
        record_batch(items, *st.session_state["batch_result"])
    result = st.session_state.get("batch_result")
    if result is not None and len(result[0]):
        results_ui(*result)
    elif not uploads:
        st.info("Upload images (or pick random dataset images) to analyse them together.")


batch_page()
