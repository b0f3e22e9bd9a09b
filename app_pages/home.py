"""Home: what LesionLens is, the disclaimer, and the shipped model's summary from its model card."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.data.classes import CLASSES
from core.data.dataset_summary import images_per_source
from core.decisions.model_card import ModelCard
from ui.analyzers import device_text
from ui.data_folder import SOURCE_LABELS
from ui.formatting import DISCLAIMER, HEADLINE_SOURCES, headline_format, headline_label, short_name
from ui.metric_views import ci_metric
from ui.model_files import classification_of, model_card
from ui.out_of_source import held_out_summary_ui


def backbones_text(card: ModelCard) -> str:
    """"backbone X" when the three networks share one, else each network's."""
    if len(set(card.backbones.values())) == 1:
        return f"backbone {card.backbones['mask_cn']}"
    return "backbones " + ", ".join(f"{network} {name}" for network, name in card.backbones.items())


def metrics_ui(card: ModelCard) -> None:
    """Version line and the card's headline figures with their 95 % CIs, both test sets."""
    rule = card.decision_rule
    sizes = ", ".join(f"{network} {width}×{height}" for network, (height, width)
                      in (("classifier", card.input_size.classifier), ("segmenter", card.input_size.segmenter)))
    st.subheader("Shipped model")
    st.caption(f"Version **{card.version}** · created {str(card.display('created'))[:19]} · "
               f"{backbones_text(card)} · input {sizes} · decision rule: "
               f"{rule.views} test-time view(s), temperature {rule.temperature:.2f}")
    headline = {k: v for k, v in card.display("headline").items() if v}
    for source, label in HEADLINE_SOURCES.items():
        entries = {k: v for k, v in headline.items() if k.startswith(f"{source}_")}
        if not entries:
            continue
        st.markdown(f"**{label}**")
        for column, (key, entry) in zip(st.columns(4), entries.items()):
            ci_metric(column, headline_label(key, with_source=False), entry, headline_format(key))
    st.caption("Bootstrap 95% confidence intervals (HAM10000: lesions resampled). HAM10000 test: the lesion-grouped "
               "held-out split; ISIC 2017 val: the official validation set, from other clinics (nothing was chosen "
               "on it).")


def splits_ui(card: ModelCard) -> None:
    """Images per split and source, from the model card's dataset summary."""
    summary = card.display("dataset_summary")
    rows = {split: images_per_source(summary, part) for split, part in summary.get("splits", {}).items()}
    if not rows:
        return
    table = pd.DataFrame(rows).fillna(0).astype(int).rename(index=lambda s: SOURCE_LABELS.get(s, s))
    st.markdown("**Images per split**")
    st.dataframe(table.rename_axis("Source"), key="home_splits")
    st.caption("HAM10000 is split by lesion, so no lesion appears in more than one of train / val / test.")


def training_data_ui(card: ModelCard) -> None:
    """Training data description, splits and the per-class test recall."""
    per_class = classification_of(card, "ham10000_test").get("per_class", {})
    data = card.display("data")
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
                "Recall": st.column_config.ProgressColumn("HAM10000 test recall", min_value=0.0, max_value=100.0,
                                                          format="%.1f%%", width="medium"),
                "Test images": st.column_config.NumberColumn("Test images", width="small"),
            })


def home_page() -> None:
    st.title("LesionLens")
    st.markdown("Dermoscopic skin-lesion analysis for **dermatologists and skin-imaging researchers**: lesion "
                "segmentation, 7-class diagnosis probabilities (HAM10000 classes), one triage verdict (refer / review / "
                "no referral), uncertainty in words, an out-of-distribution check, class-activation maps, similar confirmed cases "
                "and ABCD-style measurements.")
    st.warning(DISCLAIMER, icon=":material/medical_information:")
    st.markdown(
        "- **Analyze** — one image: triage verdict, mask, probabilities, uncertainty, class activation map, "
        "measurements, similar cases, patient context, PDF report.\n"
        "- **Dataset explorer** — HAM10000 / ISIC 2017 / acral distributions and an image gallery.\n"
        "- **Model performance** — both test sets with 95% CIs: confusion matrix, ROC/PR, referral threshold, "
        "uncertainty, calibration, out-of-distribution, out of source (a new clinic), similar cases, ablations.\n"
        "- **Batch** — many images at once (optional patient-context CSV), results as CSV.\n"
        "- **Compare follow-up** — a baseline and a follow-up image of one lesion.\n"
        "- **Evaluate your data** — the shipped model on your own labelled folder, with CIs."
    )
    card = model_card()
    metrics_ui(card)
    held_out_summary_ui(card)
    training_data_ui(card)
    st.caption(f"Compute: {device_text()}")


home_page()
