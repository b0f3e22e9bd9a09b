"""Model performance on the held-out test split, from the model card and weights/test_predictions.csv."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.classes import CLASS_CODES, CLASSES
from ui.analyzers import ModelUnavailable, pool, weights_dir
from ui.data_folder import available_sources, current_data_dir
from ui.datasets import dataset_cam, manifest, read_image_path
from ui.figures import (confusion_figure, operating_point_figure, pr_figure, reliability_figure, roc_figure,
                        segmentation_histograms, selected_cell, training_curves_figure)
from ui.formatting import MODEL_LABELS, SEG_LABELS, cam_caption, class_label, class_name, decimals, pct
from ui.images import cam_overlay
from ui.model_files import model_card, predictions_of, temperature_of

ABLATION_METRICS = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "macro_auc": "Macro AUC",
                    "dice_mean": "Dice (mean)", "jaccard_mean": "Jaccard (mean)",
                    "jaccard_thresholded_065": "Thresholded Jaccard (0.65)"}
DRILL_DOWN_CAM = "Grad-CAM"


def no_predictions_ui(model: str) -> None:
    st.info(f"weights/test_predictions.csv has no per-image predictions of the {MODEL_LABELS[model]} (columns "
            f"`{'' if model == 'mask_cn' else model + '_'}pred`, `…p_mel`), so this view is not available for it.")


# ---------------------------------------------------------------- headline and per-class table
def headline_ui(m: dict) -> None:
    cols = st.columns(6)
    cols[0].metric("Accuracy", pct(m.get("accuracy")))
    cols[1].metric("Balanced accuracy", pct(m.get("balanced_accuracy")), help="Mean per-class recall.")
    cols[2].metric("Top-2 accuracy", pct(m.get("top2_accuracy")))
    cols[3].metric("Top-3 accuracy", pct(m.get("top3_accuracy")))
    cols[4].metric("Macro AUC", decimals(m.get("macro_auc")))
    cols[5].metric("Melanoma sensitivity", pct(m.get("per_class", {}).get("mel", {}).get("recall")),
                   help="Recall of mel at the arg-max decision.")


def per_class_ui(m: dict) -> None:
    rows = []
    for c in CLASSES:
        pc = m.get("per_class", {}).get(c.code, {})
        pcts = {k: None if pc.get(k) is None else 100 * pc[k] for k in ("precision", "recall", "f1")}
        rows.append({"Class": c.name, "Code": c.code, "Malignant": "▲ yes" if c.malignant else "no",
                     "Precision": pcts["precision"], "Recall": pcts["recall"], "F1": pcts["f1"],
                     "AUC": pc.get("auc"), "Support": pc.get("support")})
    bar = dict(min_value=0.0, max_value=100.0, format="%.1f%%")
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="per_class_table", column_config={
        "Precision": st.column_config.ProgressColumn("Precision", **bar),
        "Recall": st.column_config.ProgressColumn("Recall (sensitivity)", **bar),
        "F1": st.column_config.ProgressColumn("F1", **bar),
        "AUC": st.column_config.NumberColumn("AUC", format="%.3f"),
        "Support": st.column_config.NumberColumn("Test images", format="%d"),
    })


# ---------------------------------------------------------------- confusion matrix + drill-down
def _cell_clicked() -> None:
    """on_select of the matrix: the clicked cell goes into the two boxes, which drive the drill-down."""
    points = (st.session_state.get("cm_chart") or {}).get("selection", {}).get("points", [])
    cell = selected_cell(points)
    if cell:
        st.session_state["cm_true"], st.session_state["cm_pred"] = cell


def confusion_ui(m: dict) -> tuple[str, str] | None:
    """The clickable matrix and the true/predicted boxes; returns the chosen cell."""
    matrix = np.asarray(m.get("confusion_matrix", []))
    if matrix.shape != (len(CLASS_CODES), len(CLASS_CODES)):
        st.info("No confusion matrix in the model card.")
        return None
    left, right = st.columns([3, 1])
    normalised = right.toggle("Row-normalised", value=True, key="cm_norm", help="Share of each true class.")
    left.plotly_chart(confusion_figure(matrix, normalised), key="cm_chart", on_select=_cell_clicked,
                      selection_mode="points", config={"displayModeBar": False})
    st.session_state.setdefault("cm_true", "mel")  # the costly miss, by default
    st.session_state.setdefault("cm_pred", "nv")
    true = right.selectbox("True class", CLASS_CODES, format_func=class_label, key="cm_true")
    pred = right.selectbox("Predicted class", CLASS_CODES, format_func=class_label, key="cm_pred")
    right.caption("Click a cell (or use the two boxes) to see those test images below.")
    right.caption(" · ".join(f"{c} = {class_name(c)}" for c in CLASS_CODES))
    return true, pred


def cell_images_ui(true: str, pred: str, model: str) -> int:
    """Test images with this true/predicted pair under `model`, with probabilities and CAM; returns how many it showed."""
    preds = predictions_of(model)
    if preds is None:
        no_predictions_ui(model)
        return 0
    cell = preds[(preds["dx"] == true) & (preds["pred"] == pred)]
    st.markdown(f"**{len(cell)} test image(s): true {class_name(true)}, predicted {class_name(pred)}**")
    if cell.empty:
        return 0
    data_dir = current_data_dir()
    if data_dir is None:
        st.info("Set the data folder in the sidebar to see these images.")
        st.dataframe(cell[["image_id", "dx", "pred", f"p_{pred}"]].head(50), hide_index=True)
        return 0
    c1, c2, _ = st.columns([2, 2, 3], vertical_alignment="bottom")
    show_cam = c1.toggle(f"{DRILL_DOWN_CAM} overlay", value=True, key="cm_cam",
                         help="mask-CN's class activation map for the predicted class.")
    count = c2.slider("Images", 1, 12, 6, key="cm_count")
    cell = cell.sort_values(f"p_{pred}", ascending=False).head(count)
    try:
        table = manifest(str(data_dir), tuple(available_sources(data_dir)))
    except Exception as exc:
        st.error(f"Cannot read the dataset: {exc}")
        return 0
    paths = dict(zip(zip(table["source"], table["image_id"]), table["image_path"]))
    version = None
    if show_cam:
        try:
            pool().wait()
            version = pool().version
        except ModelUnavailable as exc:
            st.warning(str(exc))
    if version:
        st.caption(f"Maps: {cam_caption(DRILL_DOWN_CAM, pred, masked=False)} (mask-CN's map for every model).")
    cols = st.columns(6)
    shown = 0
    for i, row in enumerate(cell.itertuples(index=False)):
        path, col = paths.get((row.source, row.image_id)), cols[i % 6]
        if path is None:
            col.warning(f"{row.image_id} not found in the data folder")
            continue
        rgb = read_image_path(path)
        if version:
            rgb = cam_overlay(rgb, dataset_cam(path, pred, DRILL_DOWN_CAM, version))
        p_pred, p_true = getattr(row, f"p_{pred}"), getattr(row, f"p_{true}")
        caption = f"{row.image_id} · p({pred}) {p_pred:.0%}" + ("" if pred == true else f" · p({true}) {p_true:.0%}")
        col.image(rgb, width="stretch", caption=caption)
        shown += 1
    return shown


# ---------------------------------------------------------------- curves, operating point, calibration
def curves_ui(m: dict) -> None:
    left, right = st.columns(2)
    left.plotly_chart(roc_figure(m), key="roc_chart")
    right.plotly_chart(pr_figure(m), key="pr_chart")


def operating_point_ui(m: dict, model: str) -> dict | None:
    """Melanoma threshold slider -> sensitivity / specificity of `model` on the test predictions (core.metrics)."""
    from core.metrics import sensitivity_specificity_at

    preds = predictions_of(model)
    if preds is None:
        no_predictions_ui(model)
        return None
    st.markdown(f"The {MODEL_LABELS[model]} calls an image **melanoma-positive** when its calibrated melanoma "
                "probability is at least the threshold. Lower thresholds catch more melanomas at the cost of more "
                "benign lesions flagged.")
    threshold = st.slider("Melanoma threshold", 0.0, 1.0, 0.30, 0.01, key="mel_threshold")
    is_mel = (preds["dx"] == "mel").to_numpy()
    sens, spec = sensitivity_specificity_at(preds["p_mel"].to_numpy(), is_mel, threshold)
    c1, c2, c3 = st.columns(3)
    c1.metric("Sensitivity", pct(sens), help=f"{int(is_mel.sum())} melanomas in the test split")
    c2.metric("Specificity", pct(spec), help=f"{int((~is_mel).sum())} non-melanomas in the test split")
    c3.metric("Flagged for review", f"{int((preds['p_mel'] >= threshold).sum())} / {len(preds)}")
    roc = m.get("roc", {}).get("mel")
    if roc:
        st.plotly_chart(operating_point_figure(roc, threshold, sens, spec), key="op_chart")
    return {"threshold": threshold, "sensitivity": sens, "specificity": spec}


def calibration_ui(m: dict, temperature: float | None) -> None:
    cal = m.get("calibration", {})
    if not cal:
        st.info("No calibration data in the model card.")
        return
    st.plotly_chart(reliability_figure(cal), key="calibration_chart")
    if temperature is not None:
        st.caption(f"Temperature T = {temperature:.2f}, fitted on the validation split only. Bars: accuracy per "
                   "confidence bin; dots: the bin's mean confidence (on the diagonal when calibrated).")


def segmentation_ui(card: dict) -> None:
    metrics = card.get("metrics", {})
    rows = [{"Data": dataset, "Model": label, "Dice": seg[key].get("dice_mean"), "Jaccard": seg[key].get("jaccard_mean"),
             "Thresholded Jaccard (0.65)": seg[key].get("jaccard_thresholded_065")}
            for dataset, seg in (("HAM10000 test", metrics.get("test", {}).get("segmentation", {})),
                                 ("ISIC 2017 val", metrics.get("isic2017_val", {}).get("segmentation", {})))
            for key, label in SEG_LABELS.items() if key in seg]
    if not rows:
        st.info("No segmentation metrics in the model card.")
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="seg_table", column_config={
        c: st.column_config.NumberColumn(c, format="%.3f") for c in ("Dice", "Jaccard", "Thresholded Jaccard (0.65)")})
    st.plotly_chart(segmentation_histograms(metrics.get("test", {}).get("segmentation", {})), key="dice_chart")


# ---------------------------------------------------------------- model comparison, ablation, training
def comparison_ui(cls: dict) -> None:
    models = [k for k in MODEL_LABELS if k in cls]
    if len(models) < 2:
        st.info("The model card holds only one classifier; the image-only baseline was not evaluated.")
        return
    names = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "top2_accuracy": "Top-2",
             "top3_accuracy": "Top-3", "macro_auc": "Macro AUC"}
    rows = [{"Metric": label, **{MODEL_LABELS[k]: cls[k].get(key) for k in models}} for key, label in names.items()]
    rows += [{"Metric": f"Recall {class_name(c)}",
              **{MODEL_LABELS[k]: cls[k].get("per_class", {}).get(c, {}).get("recall") for k in models}}
             for c in CLASS_CODES]
    table = pd.DataFrame(rows)
    a, b = (MODEL_LABELS[k] for k in models)
    table["Difference"] = table[a] - table[b]
    st.dataframe(table, hide_index=True, key="comparison_table", column_config={
        c: st.column_config.NumberColumn(c, format="%.3f") for c in (a, b, "Difference")})
    for col, key in zip(st.columns(2), models):
        matrix = np.asarray(cls[key].get("confusion_matrix", []))
        if matrix.size:
            col.plotly_chart(confusion_figure(matrix, True, MODEL_LABELS[key], height=460), key=f"cmp_{key}",
                             config={"displayModeBar": False})


def ablation_ui(card: dict) -> None:
    ablation = card.get("ablation") or []
    if ablation:
        wide = pd.DataFrame(ablation).pivot_table(index=["comparison", "metric"], columns="model", values="value",
                                                  aggfunc="first", sort=False).reset_index()
        wide.columns.name = None
        wide["metric"] = wide["metric"].map(lambda name: ABLATION_METRICS.get(name, str(name).replace("_", " ")))
        models = [c for c in wide.columns if c not in ("comparison", "metric")]
        st.dataframe(wide, hide_index=True, key="ablation_table", placeholder="—", column_config={
            "comparison": st.column_config.TextColumn("Comparison"), "metric": st.column_config.TextColumn("Metric"),
            **{c: st.column_config.NumberColumn(c, format="%.4f") for c in models}})
    else:
        st.info("No ablation results in the model card.")
    curves = card.get("training_curves") or {}
    if curves:
        st.plotly_chart(training_curves_figure(curves), key="training_chart")
        st.caption("Validation metric: Dice for the segmenters, balanced accuracy for the classifiers.")


def performance_page() -> None:
    st.title("Model performance")
    card = model_card()
    if card is None:
        st.info(f"No model card at `{weights_dir() / 'model_card.json'}` yet — train and evaluate a model first.")
        return
    cls = card.get("metrics", {}).get("test", {}).get("classification", {})
    models = [k for k in MODEL_LABELS if k in cls]
    if not models:
        st.warning("The model card has no test classification metrics.")
        return
    n_test = sum(cls[models[0]].get("per_class", {}).get(c, {}).get("support", 0) for c in CLASS_CODES)
    st.caption(f"Model {card.get('version', '?')} · held-out HAM10000 test split (grouped by lesion) · "
               f"{n_test:,} test images")
    model = st.segmented_control("Classifier", models, default=models[0], format_func=MODEL_LABELS.get,
                                 key="perf_model", required=True)
    m = cls[model]
    headline_ui(m)
    tabs = st.tabs(["Per class", "Confusion matrix", "ROC & PR", "Melanoma threshold", "Calibration",
                    "Segmentation", "mask-CN vs image-only", "Ablation & training"])
    with tabs[0]:
        per_class_ui(m)
    with tabs[1]:
        cell = confusion_ui(m)
        if cell:
            cell_images_ui(*cell, model)
    with tabs[2]:
        curves_ui(m)
    with tabs[3]:
        operating_point_ui(m, model)
    with tabs[4]:
        calibration_ui(m, temperature_of(card, model))
    with tabs[5]:
        segmentation_ui(card)
    with tabs[6]:
        comparison_ui(cls)
    with tabs[7]:
        ablation_ui(card)


performance_page()
