"""Batch analysis: many images -> one table (thumbnail, prediction, probabilities, OOD, measurements) -> CSV."""
from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import streamlit as st

import app_support as ui
from core.classes import CLASS_CODES, MALIGNANT_CODES

MAX_FILES = 200
PROB_COLUMNS = [f"p_{c}" for c in CLASS_CODES]


def analyse_one(analyzer, data: bytes, name: str, true_dx: str = "") -> dict:
    """One row of the batch table; any problem becomes the row's error (the batch never stops)."""
    from core.intake import ImageRejected, load_image

    row = {"thumbnail": None, "file": name, "true_dx": true_dx or None, "prediction": None, "pred_code": None, "probability": None,
           "malignant_total": None, "uncertainty": None, "ood": None, **{p: None for p in PROB_COLUMNS},
           "area_px": None, "max_diameter_px": None, "asymmetry": None, "border_irregularity": None,
           "colours": None, "error": ""}
    try:
        rgb = load_image(data, name)
        row["thumbnail"] = ui.thumbnail_data_uri(rgb)
        r = analyzer.analyze(rgb)
    except ImageRejected as exc:
        row["error"] = str(exc)
        return row
    except Exception as exc:  # a model failure on one image must not end the batch
        row["error"] = f"analysis failed: {exc}"
        return row
    m = r.measurements or {}
    row.update({
        "prediction": ui.class_label_marked(r.label), "pred_code": r.label, "probability": r.probs[r.label],
        "malignant_total": sum(p for c, p in r.probs.items() if c in MALIGNANT_CODES),
        "uncertainty": r.uncertainty, "ood": bool(r.ood),
        **{f"p_{c}": r.probs.get(c) for c in CLASS_CODES},
        "area_px": m.get("area_px"), "max_diameter_px": m.get("max_diameter_px"), "asymmetry": m.get("asymmetry"),
        "border_irregularity": m.get("border_irregularity"), "colours": ", ".join(m.get("colours", [])),
    })
    return row


def run_batch(analyzer, items: list[tuple[str, callable, str]]) -> pd.DataFrame:
    """items: (name, () -> bytes, true label). Shows st.progress; returns the result table."""
    progress = st.progress(0.0, text="Starting…")
    rows = []
    for i, (name, read, true_dx) in enumerate(items):
        progress.progress(i / len(items), text=f"Analysing {name} ({i + 1}/{len(items)})")
        try:
            data = read()
        except Exception as exc:
            rows.append(analyse_one(analyzer, b"", name, true_dx) | {"error": f"cannot read: {exc}"})
            continue
        rows.append(analyse_one(analyzer, data, name, true_dx))
    progress.progress(1.0, text=f"Done: {len(items)} image(s)")
    return pd.DataFrame(rows)


def results_ui(table: pd.DataFrame) -> None:
    ok = table["error"] == ""
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Images", len(table))
    c2.metric("Analysed", int(ok.sum()))
    c3.metric("Rejected / failed", int((~ok).sum()))
    c4.metric("Flagged out of distribution", int(table["ood"].fillna(False).astype(bool).sum()))
    if table["true_dx"].notna().any():
        labelled = table[ok & table["true_dx"].notna()]
        agree = int((labelled["pred_code"] == labelled["true_dx"]).sum())
        st.caption(f"Dataset examples: prediction agrees with the true label for {agree} of {len(labelled)}.")
    shown = table.drop(columns=["pred_code"] + ([] if table["true_dx"].notna().any() else ["true_dx"]))
    shown.insert(2, "status", ["✓ analysed" if not e else f"✗ {e}" for e in table["error"]])
    shown = shown.drop(columns=["error"])
    for column in PROB_COLUMNS + ["probability", "malignant_total"]:
        shown[column] = shown[column].astype(float) * 100
    # a ticked grey checkbox is easy to miss: spell the out-of-distribution flag out
    shown["ood"] = [None if flag is None or pd.isna(flag) else ("⚠ yes" if flag else "no") for flag in table["ood"]]
    # measurements next to the prediction, the 7 per-class probabilities last (they need horizontal scrolling)
    shown = shown[[c for c in shown.columns if c not in PROB_COLUMNS] + PROB_COLUMNS]
    config = {
        "thumbnail": st.column_config.ImageColumn("Image", width="small"),
        "status": st.column_config.TextColumn("Status", width="medium"),
        "file": st.column_config.TextColumn("File"),
        "true_dx": st.column_config.TextColumn("True label"),
        "prediction": st.column_config.TextColumn("Prediction", help="▲ = malignant class"),
        "probability": st.column_config.ProgressColumn("Probability", min_value=0.0, max_value=100.0,
                                                       format="%.1f%%"),
        "malignant_total": st.column_config.NumberColumn("All malignant", format="%.1f%%",
                                                         help="Sum of akiec, bcc and mel probabilities"),
        "uncertainty": st.column_config.NumberColumn("Uncertainty", format="%.2f"),
        "ood": st.column_config.TextColumn("OOD", help="Out of distribution. ⚠ = the image looks unlike the "
                                           "dermoscopic training data; treat its prediction with caution"),
        **{p: st.column_config.NumberColumn(p.replace("p_", "p "), format="%.1f%%") for p in PROB_COLUMNS},
        "area_px": st.column_config.NumberColumn("Area (px)", format="%d"),
        "max_diameter_px": st.column_config.NumberColumn("Max diameter (px)", format="%.0f"),
        "asymmetry": st.column_config.NumberColumn("Asymmetry", format="%.2f"),
        "border_irregularity": st.column_config.NumberColumn("Border irregularity", format="%.2f"),
        "colours": st.column_config.TextColumn("Colours"),
    }
    st.dataframe(shown, hide_index=True, column_config=config, key="batch_table", row_height=60, placeholder="—")
    failed = table[~ok]
    if len(failed):
        st.warning("**Not analysed** (the rest of the batch was):\n" + "\n".join(
            f"- `{row.file}`: {row.error}" for row in failed.itertuples(index=False)), icon=":material/block:")
    csv = table.drop(columns=["thumbnail"]).to_csv(index=False).encode("utf-8")
    st.download_button("Download results (CSV)", csv, file_name="lesionlens_batch.csv", mime="text/csv",
                       key="dl_batch_csv", type="primary", icon=":material/download:")


def examples_ui(data_dir: Path | None) -> list | None:
    """Random labelled dataset images (one per class, then any) — a demo of the table without uploads."""
    if data_dir is None or not ui.available_sources(data_dir):
        return None
    box = st.expander("No images at hand? Analyse random labelled dataset images", icon=":material/casino:")
    c1, c2 = box.columns([1, 3], vertical_alignment="bottom")
    n = c1.number_input("Dataset images", 1, 50, 7, key="batch_n")
    if not c2.button("Analyse random dataset images", key="batch_examples"):
        return None
    table = ui.manifest(str(data_dir), tuple(ui.available_sources(data_dir)))
    table = table[table["source"] == "ham10000"] if (table["source"] == "ham10000").any() else table
    rng = random.Random()
    picks = [table[table["dx"] == c].iloc[rng.randrange((table["dx"] == c).sum())] for c in CLASS_CODES
             if (table["dx"] == c).any()][: int(n)]
    while len(picks) < n:
        picks.append(table.iloc[rng.randrange(len(table))])
    return [(row["image_id"], (lambda p=row["image_path"]: Path(p).read_bytes()), row["dx"]) for row in picks]


def batch_page() -> None:
    st.title("Batch analysis")
    st.caption(ui.DISCLAIMER)
    uploads = st.file_uploader("Dermoscopic images", type=ui.UPLOAD_TYPES, accept_multiple_files=True,
                               key="batch_upload", help=f"Up to {MAX_FILES} files; analysed in memory, never stored.")
    items = None
    if uploads:
        if len(uploads) > MAX_FILES:
            st.warning(f"{len(uploads)} files selected: only the first {MAX_FILES} are analysed.")
        if st.button(f"Analyse {min(len(uploads), MAX_FILES)} image(s)", type="primary", key="batch_run"):
            items = [(f.name, f.getvalue, "") for f in uploads[:MAX_FILES]]
    example_items = examples_ui(ui.current_data_dir())
    items = items or example_items
    if items:
        analyzer, error = ui.analyzer_or_error()
        if error:
            st.error(error)
            return
        st.session_state["batch_result"] = run_batch(analyzer, items)
    result = st.session_state.get("batch_result")
    if result is not None and len(result):
        results_ui(result)
    elif not uploads:
        st.info("Upload images (or pick random dataset images) to analyse them together.")


batch_page()
