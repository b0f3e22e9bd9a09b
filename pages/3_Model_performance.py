"""Model performance on the held-out test split, from the model card and weights/test_predictions.csv."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

import app_support as ui
from core.classes import CLASS_CODES, CLASSES, MALIGNANT_CODES

ABLATION_METRICS = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "macro_auc": "Macro AUC",
                    "dice_mean": "Dice (mean)", "jaccard_mean": "Jaccard (mean)",
                    "jaccard_thresholded_065": "Thresholded Jaccard (0.65)"}
CM_SCALE = [[0.0, "#F7FBFF"], [0.5, "#6BAED6"], [1.0, "#08306B"]]


def classification(card: dict) -> dict:
    return card.get("metrics", {}).get("test", {}).get("classification", {})


def _fmt(value, pct: bool = True) -> str:
    if value is None:
        return "—"
    return f"{value:.1%}" if pct else f"{value:.3f}"


# ---------------------------------------------------------------- headline and per-class table
def headline_ui(m: dict) -> None:
    mel = m.get("per_class", {}).get("mel", {})
    cols = st.columns(6)
    cols[0].metric("Accuracy", _fmt(m.get("accuracy")))
    cols[1].metric("Balanced accuracy", _fmt(m.get("balanced_accuracy")), help="Mean per-class recall.")
    cols[2].metric("Top-2 accuracy", _fmt(m.get("top2_accuracy")))
    cols[3].metric("Top-3 accuracy", _fmt(m.get("top3_accuracy")))
    cols[4].metric("Macro AUC", _fmt(m.get("macro_auc"), pct=False))
    cols[5].metric("Melanoma sensitivity", _fmt(mel.get("recall")), help="Recall of mel at the arg-max decision.")


def per_class_ui(m: dict) -> pd.DataFrame:
    rows = []
    for c in CLASSES:
        pc = m.get("per_class", {}).get(c.code, {})
        pct = {k: None if pc.get(k) is None else 100 * pc[k] for k in ("precision", "recall", "f1")}
        rows.append({"Class": c.name, "Code": c.code, "Malignant": "▲ yes" if c.malignant else "no",
                     "Precision": pct["precision"], "Recall": pct["recall"], "F1": pct["f1"],
                     "AUC": pc.get("auc"), "Support": pc.get("support")})
    table = pd.DataFrame(rows)
    bar = dict(min_value=0.0, max_value=100.0, format="%.1f%%")
    st.dataframe(table, hide_index=True, key="per_class_table", column_config={
        "Precision": st.column_config.ProgressColumn("Precision", **bar),
        "Recall": st.column_config.ProgressColumn("Recall (sensitivity)", **bar),
        "F1": st.column_config.ProgressColumn("F1", **bar),
        "AUC": st.column_config.NumberColumn("AUC", format="%.3f"),
        "Support": st.column_config.NumberColumn("Test images", format="%d"),
    })
    return table


# ---------------------------------------------------------------- confusion matrix + drill-down
def confusion_figure(matrix: np.ndarray, normalised: bool, title: str = "", height: int = 520) -> go.Figure:
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    z = shares if normalised else counts
    names = [ui.class_name(c) for c in CLASS_CODES]
    codes = list(CLASS_CODES)
    text = [[f"{shares[i, j]:.0%}" if normalised else f"{int(counts[i, j])}" for j in range(len(names))]
            for i in range(len(names))]
    fig = go.Figure(go.Heatmap(
        z=z.tolist(), x=codes, y=names, colorscale=CM_SCALE, text=text, texttemplate="%{text}", showscale=False,
        customdata=np.dstack([counts, shares]).tolist(),
        hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata[0]:.0f} images (%{customdata[1]:.1%} of row)"
                      "<extra></extra>",
    ))
    # Invisible markers on every cell: clicking a cell selects its point (st.plotly_chart on_select).
    xs, ys = np.meshgrid(codes, names)
    fig.add_trace(go.Scatter(x=xs.ravel(), y=ys.ravel(), mode="markers", marker=dict(size=28, opacity=0.01),
                             hoverinfo="skip", showlegend=False))
    fig.update_yaxes(autorange="reversed", title="True diagnosis")
    fig.update_xaxes(title="Predicted (class code)", side="bottom")
    fig.update_layout(height=height, title=title, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      clickmode="event+select")
    return fig


def _cell_selected() -> None:
    """on_select callback: copy the clicked cell into the two selectboxes (the fallback that always works)."""
    state = st.session_state.get("cm_chart")
    points = (state or {}).get("selection", {}).get("points", []) if state else []
    by_name = {ui.class_name(c): c for c in CLASS_CODES} | {c: c for c in CLASS_CODES}
    for point in points:
        true, pred = by_name.get(point.get("y")), by_name.get(point.get("x"))
        if true and pred:
            st.session_state["cm_true"], st.session_state["cm_pred"] = true, pred
            return


def confusion_ui(m: dict, model: str) -> tuple[str, str]:
    matrix = np.asarray(m.get("confusion_matrix", []))
    if matrix.shape != (len(CLASS_CODES), len(CLASS_CODES)):
        st.info("No confusion matrix in the model card.")
        return "mel", "nv"
    left, right = st.columns([3, 1])
    normalised = right.toggle("Row-normalised", value=True, key="cm_norm", help="Share of each true class.")
    left.plotly_chart(confusion_figure(matrix, normalised), key="cm_chart", on_select=_cell_selected,
                      selection_mode="points", config={"displayModeBar": False})
    if "cm_true" not in st.session_state:
        st.session_state["cm_true"], st.session_state["cm_pred"] = "mel", "nv"  # the costly miss, by default
    true = right.selectbox("True class", CLASS_CODES, format_func=ui.class_label, key="cm_true")
    pred = right.selectbox("Predicted class", CLASS_CODES, format_func=ui.class_label, key="cm_pred")
    right.caption("Click a cell (or use the two boxes) to see those test images below.")
    codes = " · ".join(f"{c} = {ui.class_name(c)}" for c in CLASS_CODES)
    right.caption(codes)
    return true, pred


def cell_images_ui(true: str, pred: str, model: str) -> int:
    """Test images with this true/predicted pair, with probability and CAM; returns how many it showed."""
    preds = ui.test_predictions()
    if preds is None:
        st.info("weights/test_predictions.csv is missing, so the test images cannot be listed.")
        return 0
    if model != "mask_cn":
        st.caption("The image list shows the shipped mask-CN's test predictions.")
    cell = preds[(preds["dx"] == true) & (preds["pred"] == pred)].copy()
    n_cell = len(cell)
    st.markdown(f"**{n_cell} test image(s): true {ui.class_name(true)}, predicted {ui.class_name(pred)}**")
    if cell.empty:
        return 0
    data_dir = ui.current_data_dir()
    if data_dir is None:
        st.info("Set the data folder in the sidebar to see these images.")
        st.dataframe(cell[["image_id", "dx", "pred", f"p_{pred}"]].head(50), hide_index=True)
        return 0
    c1, c2, _ = st.columns([2, 2, 3], vertical_alignment="bottom")
    show_cam = c1.toggle("Grad-CAM overlay", value=True, key="cm_cam",
                         help="Class activation map for the predicted class.")
    count = c2.slider("Images", 1, 12, 6, key="cm_count")
    cell = cell.sort_values(f"p_{pred}", ascending=False).head(count)
    try:
        table = ui.manifest(str(data_dir), tuple(ui.available_sources(data_dir)))
    except Exception as exc:
        st.error(f"Cannot read the dataset: {exc}")
        return 0
    paths = dict(zip(zip(table["source"], table["image_id"]), table["image_path"]))
    analyzer = None
    if show_cam:
        analyzer, error = ui.analyzer_or_error()
        if error:
            st.warning(error)
    cols = st.columns(6)
    shown = 0
    for i, row in enumerate(cell.itertuples(index=False)):
        path = paths.get((row.source, row.image_id))
        col = cols[i % 6]
        if path is None:
            col.warning(f"{row.image_id} not found in the data folder")
            continue
        rgb = ui.read_image_path(path)
        if analyzer is not None:
            from core.cam import overlay_heatmap

            cam = ui.dataset_cam(analyzer, path, pred, "Grad-CAM", analyzer.version)
            rgb = overlay_heatmap(rgb, cam, alpha=0.4)
        p_pred, p_true = getattr(row, f"p_{pred}"), getattr(row, f"p_{true}")
        caption = f"{row.image_id} · p({pred}) {p_pred:.0%}" + ("" if pred == true else f" · p({true}) {p_true:.0%}")
        col.image(rgb, width="stretch", caption=caption)
        shown += 1
    return shown


# ---------------------------------------------------------------- curves
def curves_ui(m: dict) -> None:
    roc, pr = m.get("roc", {}), m.get("pr", {})
    per_class = m.get("per_class", {})
    left, right = st.columns(2)
    fig = go.Figure()
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=dict(color="#999", dash="dot"))
    for code in CLASS_CODES:
        if code in roc:
            auc = per_class.get(code, {}).get("auc")
            fig.add_trace(go.Scatter(x=roc[code]["fpr"], y=roc[code]["tpr"], mode="lines",
                                     name=f"{ui.class_name(code)} (AUC {auc:.3f})" if auc is not None else code,
                                     line=dict(color=ui.class_colour(code), width=3 if code == "mel" else 2)))
    fig.update_layout(title="ROC (one class vs rest)", xaxis_title="1 − specificity", yaxis_title="Sensitivity",
                      height=480, legend=dict(orientation="h", y=-0.25))
    left.plotly_chart(fig, key="roc_chart")
    fig = go.Figure()
    for code in CLASS_CODES:
        if code in pr:
            fig.add_trace(go.Scatter(x=pr[code]["recall"], y=pr[code]["precision"], mode="lines",
                                     name=ui.class_name(code), line=dict(color=ui.class_colour(code),
                                                                         width=3 if code == "mel" else 2)))
    fig.update_layout(title="Precision–recall", xaxis_title="Recall", yaxis_title="Precision", height=480,
                      legend=dict(orientation="h", y=-0.25))
    right.plotly_chart(fig, key="pr_chart")


def operating_point_ui(m: dict) -> dict | None:
    """Melanoma threshold slider -> sensitivity / specificity on the test predictions (core.metrics)."""
    from core.metrics import sensitivity_specificity_at

    preds = ui.test_predictions()
    if preds is None or "p_mel" not in preds:
        st.info("weights/test_predictions.csv is missing: the operating point needs per-image probabilities.")
        return None
    st.markdown("Call an image **melanoma-positive** when its calibrated melanoma probability is at least the "
                "threshold. Lower thresholds catch more melanomas at the cost of more benign lesions flagged.")
    threshold = st.slider("Melanoma threshold", 0.0, 1.0, 0.30, 0.01, key="mel_threshold")
    is_mel = (preds["dx"] == "mel").to_numpy()
    sens, spec = sensitivity_specificity_at(preds["p_mel"].to_numpy(), is_mel, threshold)
    flagged = int((preds["p_mel"] >= threshold).sum())
    c1, c2, c3 = st.columns(3)
    c1.metric("Sensitivity", _fmt(sens), help=f"{int(is_mel.sum())} melanomas in the test split")
    c2.metric("Specificity", _fmt(spec), help=f"{int((~is_mel).sum())} non-melanomas in the test split")
    c3.metric("Flagged for review", f"{flagged} / {len(preds)}")
    roc = m.get("roc", {}).get("mel")
    if roc:
        fig = go.Figure(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name="Melanoma ROC",
                                   line=dict(color=ui.class_colour("mel"))))
        if sens is not None and spec is not None:
            fig.add_trace(go.Scatter(x=[1 - spec], y=[sens], mode="markers", name=f"threshold {threshold:.2f}",
                                     marker=dict(size=14, color="#111", symbol="x")))
        fig.update_layout(height=380, xaxis_title="1 − specificity", yaxis_title="Sensitivity",
                          margin=dict(t=10), legend=dict(orientation="h", y=-0.25))
        st.plotly_chart(fig, key="op_chart")
    return {"threshold": threshold, "sensitivity": sens, "specificity": spec}


def calibration_ui(m: dict, temperature) -> None:
    cal = m.get("calibration", {})
    if not cal:
        st.info("No calibration data in the model card.")
        return
    titles = [f"{'Before' if k == 'before' else 'After'} temperature scaling · ECE {cal[k].get('ece', float('nan')):.3f}"
              for k in ("before", "after") if k in cal]
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, shared_yaxes=True)
    for i, key in enumerate(k for k in ("before", "after") if k in cal):
        bins = [b for b in cal[key].get("bins", []) if b.get("count", 0) > 0]
        mids = [(b["lower"] + b["upper"]) / 2 for b in bins]
        widths = [(b["upper"] - b["lower"]) * 0.9 for b in bins]
        fig.add_trace(go.Bar(x=mids, y=[b["accuracy"] for b in bins], width=widths, name="accuracy",
                             marker_color="#4C78A8", customdata=[b["count"] for b in bins], showlegend=i == 0,
                             hovertemplate="confidence %{x:.2f}: accuracy %{y:.2f} (%{customdata} images)<extra></extra>"),
                      row=1, col=i + 1)
        fig.add_trace(go.Scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins],
                                 mode="markers", marker=dict(color="#E45756", size=7), name="mean confidence",
                                 showlegend=i == 0), row=1, col=i + 1)
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#999", dash="dot"),
                                 name="perfect calibration", showlegend=i == 0), row=1, col=i + 1)
        fig.update_xaxes(title="Confidence (top-class probability)", range=[0, 1], row=1, col=i + 1)
    fig.update_yaxes(title="Accuracy", range=[0, 1], row=1, col=1)
    fig.update_layout(height=420, legend=dict(orientation="h", y=-0.3))
    st.plotly_chart(fig, key="calibration_chart")
    if temperature is not None:
        st.caption(f"Temperature T = {float(temperature):.2f}, fitted on the validation split only.")


def segmentation_ui(card: dict) -> None:
    from core.metrics import jaccard_from_dice

    metrics = card.get("metrics", {})
    rows = []
    for dataset, seg in (("HAM10000 test", metrics.get("test", {}).get("segmentation", {})),
                         ("ISIC 2017 val", metrics.get("isic2017_val", {}).get("segmentation", {}))):
        for key, label in ui.SEG_LABELS.items():
            if key in seg:
                rows.append({"Data": dataset, "Model": label, "Dice": seg[key].get("dice_mean"),
                             "Jaccard": seg[key].get("jaccard_mean"),
                             "Thresholded Jaccard (0.65)": seg[key].get("jaccard_thresholded_065")})
    if not rows:
        st.info("No segmentation metrics in the model card.")
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="seg_table", column_config={
        c: st.column_config.NumberColumn(c, format="%.3f") for c in ("Dice", "Jaccard", "Thresholded Jaccard (0.65)")})
    seg = metrics.get("test", {}).get("segmentation", {})
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Dice per test image", "Jaccard per test image"))
    colours = {"coarse_sn": "#9E9E9E", "enhanced_sn": "#00A86B"}
    for key, label in ui.SEG_LABELS.items():
        dices = np.asarray(seg.get(key, {}).get("dice_per_image", []), dtype=float)
        if not len(dices):
            continue
        jaccards = seg[key].get("jaccard_per_image")
        jaccards = np.asarray(jaccards, dtype=float) if jaccards else jaccard_from_dice(dices)
        for col, values in ((1, dices), (2, jaccards)):
            fig.add_trace(go.Histogram(x=values, name=label, marker_color=colours[key], opacity=0.6,
                                       xbins=dict(start=0, end=1.0001, size=0.025), legendgroup=key,
                                       showlegend=col == 1), row=1, col=col)
    fig.update_layout(barmode="overlay", height=380, legend=dict(orientation="h", y=-0.2))
    fig.update_yaxes(title="Images", row=1, col=1)
    st.plotly_chart(fig, key="dice_chart")


# ---------------------------------------------------------------- model comparison, ablation, training
def comparison_ui(cls: dict) -> None:
    models = [k for k in ("mask_cn", "classifier") if k in cls]
    if len(models) < 2:
        st.info("The model card holds only one classifier; the image-only baseline was not evaluated.")
        return
    names = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "top2_accuracy": "Top-2",
             "top3_accuracy": "Top-3", "macro_auc": "Macro AUC"}
    rows = [{"Metric": label, **{ui.MODEL_LABELS[k]: cls[k].get(key) for k in models}} for key, label in names.items()]
    rows += [{"Metric": f"Recall {ui.class_name(c)}", **{ui.MODEL_LABELS[k]: cls[k].get("per_class", {}).get(c, {})
                                                         .get("recall") for k in models}} for c in CLASS_CODES]
    table = pd.DataFrame(rows)
    a, b = (ui.MODEL_LABELS[k] for k in models)
    table["Difference"] = table[a] - table[b]
    st.dataframe(table, hide_index=True, key="comparison_table", column_config={
        c: st.column_config.NumberColumn(c, format="%.3f") for c in (a, b, "Difference")})
    cols = st.columns(2)
    for col, key in zip(cols, models):
        matrix = np.asarray(cls[key].get("confusion_matrix", []))
        if matrix.size:
            col.plotly_chart(confusion_figure(matrix, True, ui.MODEL_LABELS[key], height=460), key=f"cmp_{key}",
                             config={"displayModeBar": False})


def ablation_ui(card: dict) -> None:
    ablation = card.get("ablation") or []
    if ablation:
        table = pd.DataFrame(ablation)
        wide = table.pivot_table(index=["comparison", "metric"], columns="model", values="value", aggfunc="first",
                                 sort=False).reset_index()
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
        fig = make_subplots(rows=1, cols=2, subplot_titles=("Training loss", "Validation metric"))
        palette = {"coarse_sn": "#9E9E9E", "mask_cn": "#CC0000", "enhanced_sn": "#00A86B", "classifier": "#0072B2"}
        for stage, history in curves.items():
            frame = pd.DataFrame(history)
            if frame.empty or "epoch" not in frame:
                continue
            colour = palette.get(stage)
            for col, column in ((1, "train_loss"), (2, "val_metric")):
                if column in frame:
                    fig.add_trace(go.Scatter(x=frame["epoch"], y=frame[column], mode="lines+markers", name=stage,
                                             line=dict(color=colour), legendgroup=stage, showlegend=col == 1),
                                  row=1, col=col)
        fig.update_xaxes(title="Epoch")
        fig.update_layout(height=380, legend=dict(orientation="h", y=-0.25))
        st.plotly_chart(fig, key="training_chart")
        st.caption("Validation metric: Dice for the segmenters, balanced accuracy for the classifiers.")


def performance_page() -> None:
    st.title("Model performance")
    card = ui.model_card()
    if card is None:
        st.info(f"No model card at `{ui.weights_dir() / 'model_card.json'}` yet — train and evaluate a model first.")
        return
    cls = classification(card)
    models = [k for k in ("mask_cn", "classifier") if k in cls]
    if not models:
        st.warning("The model card has no test classification metrics.")
        return
    st.caption(f"Model {card.get('version', '?')} · held-out HAM10000 test split (grouped by lesion) · "
               f"{sum(cls[models[0]].get('per_class', {}).get(c, {}).get('support', 0) for c in CLASS_CODES):,} "
               "test images")
    model = st.segmented_control("Classifier", models, default=models[0], format_func=ui.MODEL_LABELS.get,
                                 key="perf_model", required=True)
    m = cls[model]
    headline_ui(m)
    tabs = st.tabs(["Per class", "Confusion matrix", "ROC & PR", "Melanoma threshold", "Calibration",
                    "Segmentation", "mask-CN vs image-only", "Ablation & training"])
    with tabs[0]:
        per_class_ui(m)
    with tabs[1]:
        true, pred = confusion_ui(m, model)
        cell_images_ui(true, pred, model)
    with tabs[2]:
        curves_ui(m)
    with tabs[3]:
        operating_point_ui(m)
    with tabs[4]:
        calibration_ui(m, card.get("temperature"))
    with tabs[5]:
        segmentation_ui(card)
    with tabs[6]:
        comparison_ui(cls)
    with tabs[7]:
        ablation_ui(card)


performance_page()
