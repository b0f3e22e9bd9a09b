"""Home: what LesionLens is, the disclaimer, and the shipped model's summary from its model card."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.classes import CLASSES
from core.dataset_summary import images_per_source
from ui.analyzers import device_text, weights_dir
from ui.data_folder import SOURCE_LABELS
from ui.formatting import DISCLAIMER, decimals, pct, short_name
from ui.model_files import model_card, test_metrics


def metrics_ui(card: dict) -> None:
    """Version line and the headline test metrics of mask-CN and enhanced-SN."""
    m = test_metrics(card)
    seg = card.get("metrics", {}).get("test", {}).get("segmentation", {}).get("enhanced_sn", {})
    sizes = card.get("input_size")
    if isinstance(sizes, dict):
        sizes = ", ".join(f"{k} {v.get('width')}×{v.get('height')}" if isinstance(v, dict) else f"{k} {v}"
                          for k, v in sizes.items())
    st.subheader("Shipped model")
    st.caption(f"Version **{card.get('version', 'unversioned')}** · created {str(card.get('created', '?'))[:19]} · "
               f"backbone {card.get('backbone', '?')} · input {sizes or '?'} · "
               f"temperature {float(card.get('temperature') or 1.0):.2f}")
    cols = st.columns(5)
    cols[0].metric("Test accuracy", pct(m.get("accuracy")))
    cols[1].metric("Balanced accuracy", pct(m.get("balanced_accuracy")),
                   help="Mean recall over the 7 classes — the fair number on this imbalanced data.")
    cols[2].metric("Macro AUC", decimals(m.get("macro_auc")))
    cols[3].metric("Melanoma sensitivity", pct(m.get("per_class", {}).get("mel", {}).get("recall")),
                   help="Recall of the melanoma class at the arg-max decision.")
    cols[4].metric("Lesion Dice (enhanced-SN)", decimals(seg.get("dice_mean")))


def splits_ui(card: dict) -> None:
    """Images per split and source, from the model card's dataset summary."""
    summary = card.get("dataset_summary") or {}
    rows = {split: images_per_source(summary, part) for split, part in summary.get("splits", {}).items()}
    if not rows:
        return
    table = pd.DataFrame(rows).fillna(0).astype(int).rename(index=lambda s: SOURCE_LABELS.get(s, s))
    st.markdown("**Images per split**")
    st.dataframe(table.rename_axis("Source"), key="home_splits")
    st.caption("HAM10000 is split by lesion, so no lesion appears in more than one of train / val / test.")


def training_data_ui(card: dict) -> None:
    """Training data description, splits and the per-class test recall."""
    per_class = test_metrics(card).get("per_class", {})
    data = card.get("data")
    left, right = st.columns([2, 3], gap="large")
    with left:
        st.markdown("**Training data**")
        if isinstance(data, dict):
            st.markdown("\n".join(f"- **{str(k).capitalize()}**: {v}" for k, v in data.items()
                                   if not isinstance(v, (dict, list))) or "—")
        elif data:
            st.write(str(data))
        splits_ui(card)
    with right:
        if per_class:
            table = pd.DataFrame([{"Class": short_name(c.code), "Recall": 100 * (per_class.get(c.code, {}).get("recall") or 0.0),
                                   "Test images": per_class.get(c.code, {}).get("support")} for c in CLASSES])
            st.dataframe(table, hide_index=True, column_config={
                "Recall": st.column_config.ProgressColumn("Test recall", min_value=0.0, max_value=100.0,
                                                          format="%.1f%%", width="medium"),
                "Test images": st.column_config.NumberColumn("Test images", width="small"),
            })


def home_page() -> None:
    st.title("LesionLens")
    st.markdown("Dermoscopic skin-lesion analysis for **dermatologists and skin-imaging researchers**: lesion "
                "segmentation, 7-class diagnosis probabilities (HAM10000 classes) with calibrated confidence, "
                "class-activation maps, an out-of-distribution check and ABCD-style measurements.")
    st.warning(DISCLAIMER, icon=":material/medical_information:")
    st.markdown(
        "- **Analyze** — one image: mask, probabilities, class activation map, measurements, PDF report.\n"
        "- **Dataset explorer** — HAM10000 / ISIC 2017 distributions and an image gallery.\n"
        "- **Model performance** — test-set metrics, confusion matrix, ROC/PR, calibration, ablations.\n"
        "- **Batch** — many images at once, results as CSV."
    )
    card = model_card()
    if card is None:
        st.info(f"No model has been shipped yet: `{weights_dir() / 'model_card.json'}` is missing. "
                "Train one (see README) to enable analysis.")
    else:
        metrics_ui(card)
        training_data_ui(card)
    st.caption(f"Compute: {device_text()}")


home_page()
