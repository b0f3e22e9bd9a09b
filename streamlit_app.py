"""LesionLens dashboard entry point: navigation, the shared DATA_DIR sidebar, and the Home page.

Run:  streamlit run streamlit_app.py      (DATA_DIR=../shared/data for dataset features)
The pages live in pages/ and are registered here with st.navigation so that the sidebar box for the data
folder is rendered once and shared by every page through st.session_state["data_dir"].
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

import app_support as ui
from core.classes import CLASSES

PAGES_DIR = "pages"


def card_summary_ui(card: dict) -> dict:
    """The shipped model's summary (version, data, test metrics); returns the numbers it showed."""
    test = card.get("metrics", {}).get("test", {})
    cls = test.get("classification", {}).get("mask_cn", {})
    seg = test.get("segmentation", {}).get("enhanced_sn", {})
    per_class = cls.get("per_class", {})
    mel = per_class.get("mel", {})
    shown = {
        "accuracy": cls.get("accuracy"), "balanced_accuracy": cls.get("balanced_accuracy"),
        "macro_auc": cls.get("macro_auc"), "mel_recall": mel.get("recall"), "dice": seg.get("dice_mean"),
    }
    st.subheader("Shipped model")
    sizes = card.get("input_size")
    if isinstance(sizes, dict):
        sizes = ", ".join(f"{k} {v.get('width')}×{v.get('height')}" if isinstance(v, dict) else f"{k} {v}"
                          for k, v in sizes.items())
    st.caption(
        f"Version **{card.get('version', 'unversioned')}** · created {str(card.get('created', '?'))[:19]} · "
        f"backbone {card.get('backbone', '?')} · input {sizes or '?'} · "
        f"temperature {float(card.get('temperature') or 1.0):.2f}"
    )
    cols = st.columns(5)
    cols[0].metric("Test accuracy", ui.metric_pct(shown["accuracy"]))
    cols[1].metric("Balanced accuracy", ui.metric_pct(shown["balanced_accuracy"]),
                   help="Mean recall over the 7 classes — the fair number on this imbalanced data.")
    cols[2].metric("Macro AUC", "—" if shown["macro_auc"] is None else f"{shown['macro_auc']:.3f}")
    cols[3].metric("Melanoma sensitivity", ui.metric_pct(shown["mel_recall"]),
                   help="Recall of the melanoma class at the arg-max decision.")
    cols[4].metric("Lesion Dice (enhanced-SN)", "—" if shown["dice"] is None else f"{shown['dice']:.3f}")

    summary = card.get("dataset_summary") or {}
    data = card.get("data")
    left, right = st.columns([2, 3], gap="large")
    with left:
        st.markdown("**Training data**")
        if isinstance(data, dict):
            st.markdown("\n".join(f"- **{str(k).capitalize()}**: {v}" for k, v in data.items()
                                   if not isinstance(v, (dict, list))) or "—")
        elif data:
            st.write(str(data))
        splits = summary.get("splits", {})
        if splits:
            st.markdown("**Splits**: " + " · ".join(
                f"{name} {part.get('n_images', 0):,} images ({part.get('n_lesions', 0):,} lesions)"
                for name, part in splits.items()))
        st.caption("Splits are grouped by lesion, so no lesion appears in more than one of train / val / test.")
    with right:
        if per_class:
            table = pd.DataFrame([
                {"Class": ui.short_name(c.code), "Recall": 100 * (per_class.get(c.code, {}).get("recall") or 0.0),
                 "Test images": per_class.get(c.code, {}).get("support")}
                for c in CLASSES
            ])
            st.dataframe(table, hide_index=True, column_config={
                "Class": st.column_config.TextColumn("Class"),
                "Recall": st.column_config.ProgressColumn("Test recall", min_value=0.0, max_value=100.0,
                                                          format="%.1f%%", width="medium"),
                "Test images": st.column_config.NumberColumn("Test images", width="small"),
            })
    return shown


def home() -> None:
    st.title("LesionLens")
    st.markdown(
        "Dermoscopic skin-lesion analysis for **dermatologists and skin-imaging researchers**: lesion "
        "segmentation, 7-class diagnosis probabilities (HAM10000 classes) with calibrated confidence, "
        "class-activation maps, an out-of-distribution check and ABCD-style measurements."
    )
    st.warning(ui.DISCLAIMER, icon=":material/medical_information:")
    st.markdown(
        "- **Analyze** — one image: mask, probabilities, Grad-CAM, measurements, PDF report.\n"
        "- **Dataset explorer** — HAM10000 / ISIC 2017 distributions and an image gallery.\n"
        "- **Model performance** — test-set metrics, confusion matrix, ROC/PR, calibration, ablations.\n"
        "- **Batch** — many images at once, results as CSV."
    )
    card = ui.model_card()
    if card is None:
        st.info(f"No model has been shipped yet: `{ui.weights_dir() / 'model_card.json'}` is missing. "
                "Train one (see README) to enable analysis.")
    else:
        card_summary_ui(card)
    st.caption(f"Compute: {ui.device_text()}")


def main() -> None:
    st.set_page_config(page_title="LesionLens", page_icon=":material/biotech:", layout="wide")
    ui.data_dir_sidebar()
    pages = [
        st.Page(home, title="Home", icon=":material/home:", default=True),
        st.Page(f"{PAGES_DIR}/1_Analyze.py", title="Analyze", icon=":material/biotech:"),
        st.Page(f"{PAGES_DIR}/2_Dataset_explorer.py", title="Dataset explorer", icon=":material/photo_library:"),
        st.Page(f"{PAGES_DIR}/3_Model_performance.py", title="Model performance", icon=":material/monitoring:"),
        st.Page(f"{PAGES_DIR}/4_Batch.py", title="Batch", icon=":material/stacks:"),
        st.Page(f"{PAGES_DIR}/5_Compare.py", title="Compare follow-up", icon=":material/compare:"),
    ]
    st.navigation(pages).run()
    with st.sidebar:
        st.caption("Decision support only — not a diagnosis.")


main()
