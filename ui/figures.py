"""Every plotly figure of the dashboard, built from plain data (probabilities, model-card metrics, manifest tables).
Pages only place them; figure-specific decoding (the confusion-matrix click) lives next to its figure."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.data.classes import CLASS_CODES, CLASSES, MALIGNANT_CODES
from ui.formatting import (MALIGNANT_MARK, SEG_LABELS, SHORT_NAME_COLOURS, class_colour, class_label, class_name,
                           short_name)

CM_SCALE = [[0.0, "#F7FBFF"], [0.5, "#6BAED6"], [1.0, "#08306B"]]
SEX_COLOURS = {"male": "#4C78A8", "female": "#E45756", "unknown": "#BAB0AC"}
SEG_COLOURS = {"coarse_sn": "#9E9E9E", "enhanced_sn": "#00A86B"}
STAGE_COLOURS = {"coarse_sn": "#9E9E9E", "mask_cn": "#CC0000", "enhanced_sn": "#00A86B", "classifier": "#0072B2"}
# the ablation runs beside the shipped stages (eleven runs in the card): plotly's default cycle has ten colours, so
# runs repeated each other's; Dark24 has enough distinct ones
RUN_PALETTE = px.colors.qualitative.Dark24
SPLIT_ORDER = ["train", "val", "test"]
CLASS_ORDER = {"Diagnosis": [short_name(c.code) for c in CLASSES]}
BOTTOM_LEGEND = dict(orientation="h", y=-0.25)
TEST_SET_COLOURS = ("#0F766E", "#D97706")  # HAM10000 test, ISIC 2017 val
CALIBRATION_TITLES = {"before": "Plain softmax", "after": "Shown probabilities (decision rule)"}


# ---------------------------------------------------------------- Analyze
def probability_figure(probs: dict[str, float], height: int = 330) -> go.Figure:
    """Horizontal bars of all 7 class probabilities, sorted; top 3 in their class colours, the rest grey;
    malignant classes labelled in red with ▲."""
    ordered = sorted(CLASS_CODES, key=lambda c: probs.get(c, 0.0), reverse=True)
    top3 = set(ordered[:3])
    values = [float(probs.get(c, 0.0)) for c in ordered]
    ticks = []
    for code in ordered:
        name = f"<b>{class_name(code)}</b>" if code in top3 else class_name(code)
        mark = f" <span style='color:#B00020'>{MALIGNANT_MARK} malignant</span>" if code in MALIGNANT_CODES else ""
        ticks.append(name + mark)
    fig = go.Figure(go.Bar(
        x=values, y=list(range(len(ordered))), orientation="h",
        marker_color=[class_colour(c) if c in top3 else "#C9CED6" for c in ordered],
        marker_line_color=["#B00020" if c in MALIGNANT_CODES else "rgba(0,0,0,0)" for c in ordered],
        marker_line_width=1.5, text=[f"{v:.1%}" for v in values], textposition="outside", cliponaxis=False,
        customdata=[class_label(c) for c in ordered], hovertemplate="%{customdata}: %{x:.2%}<extra></extra>",
    ))
    fig.update_yaxes(tickvals=list(range(len(ordered))), ticktext=ticks, autorange="reversed")
    fig.update_xaxes(range=[0, 1.12], tickformat=".0%", title="Calibrated probability")
    fig.update_layout(height=height, margin=dict(l=10, r=30, t=10, b=40), showlegend=False)
    return fig


# ---------------------------------------------------------------- Model performance
def confusion_figure(matrix, normalised: bool, title: str = "", height: int = 520) -> go.Figure:
    """The 7x7 confusion matrix (rows = true class, row-normalised or counts). A transparent marker on every cell
    carries the hover text and makes the cell clickable: a heatmap sends no selection events, and plotly sends click
    events only for points that take part in hover (never hoverinfo "skip"). See `selected_cell`."""
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    names = [class_name(c) for c in CLASS_CODES]
    codes = list(CLASS_CODES)
    text = [[f"{shares[i, j]:.0%}" if normalised else f"{int(counts[i, j])}" for j in range(len(codes))]
            for i in range(len(codes))]
    fig = go.Figure(go.Heatmap(z=(shares if normalised else counts).tolist(), x=codes, y=names, colorscale=CM_SCALE,
                               text=text, texttemplate="%{text}", showscale=False, hoverinfo="skip"))
    xs, ys = np.meshgrid(codes, names)
    fig.add_trace(go.Scatter(
        x=xs.ravel(), y=ys.ravel(), mode="markers", showlegend=False,
        marker=dict(size=40, symbol="square", color="rgba(0,0,0,0)"),
        selected=dict(marker=dict(color="rgba(0,0,0,0)")), unselected=dict(marker=dict(opacity=1)),
        customdata=np.dstack([counts, shares]).reshape(-1, 2).tolist(),
        hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata[0]:.0f} images (%{customdata[1]:.1%} of row)"
                      "<br>click to see them<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", title="True diagnosis")
    fig.update_xaxes(title="Predicted (class code)", side="bottom")
    fig.update_layout(height=height, title=title, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      clickmode="event+select", dragmode=False)
    return fig


def selected_cell(points: list[dict]) -> tuple[str, str] | None:
    """(true code, predicted code) of the confusion-matrix cell in a plotly selection (st.plotly_chart on_select)."""
    by_name = {class_name(c): c for c in CLASS_CODES}
    for point in points:
        true, pred = by_name.get(point.get("y")), point.get("x")
        if true and pred in CLASS_CODES:
            return true, pred
    return None


def roc_figure(m: dict) -> go.Figure:
    """One-vs-rest ROC curves of every class with its AUC (model-card metrics)."""
    roc, per_class = m.get("roc", {}), m.get("per_class", {})
    fig = go.Figure()
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=dict(color="#999", dash="dot"))
    for code in (c for c in CLASS_CODES if c in roc):
        auc = per_class.get(code, {}).get("auc")
        fig.add_trace(go.Scatter(x=roc[code]["fpr"], y=roc[code]["tpr"], mode="lines",
                                 name=f"{class_name(code)} (AUC {auc:.3f})" if auc is not None else class_name(code),
                                 line=dict(color=class_colour(code), width=3 if code == "mel" else 2)))
    fig.update_layout(title="ROC (one class vs rest)", xaxis_title="1 − specificity", yaxis_title="Sensitivity",
                      height=480, legend=BOTTOM_LEGEND)
    return fig


def pr_figure(m: dict) -> go.Figure:
    """Precision-recall curves of every class (model-card metrics)."""
    pr = m.get("pr", {})
    fig = go.Figure()
    for code in (c for c in CLASS_CODES if c in pr):
        fig.add_trace(go.Scatter(x=pr[code]["recall"], y=pr[code]["precision"], mode="lines", name=class_name(code),
                                 line=dict(color=class_colour(code), width=3 if code == "mel" else 2)))
    fig.update_layout(title="Precision–recall", xaxis_title="Recall", yaxis_title="Precision", height=480,
                      legend=BOTTOM_LEGEND)
    return fig


def referral_roc_figure(curves: dict[str, dict], threshold: float) -> go.Figure:
    """ROC curves of the melanoma referral score on each test set (label -> {fpr, tpr, sensitivity, specificity}),
    each with the point of `threshold` marked."""
    fig = go.Figure()
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=dict(color="#999", dash="dot"))
    for (label, curve), colour in zip(curves.items(), TEST_SET_COLOURS):
        fig.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=label, line=dict(color=colour)))
        if curve["sensitivity"] is not None and curve["specificity"] is not None:
            fig.add_trace(go.Scatter(x=[1 - curve["specificity"]], y=[curve["sensitivity"]], mode="markers",
                                     name=f"{label}: threshold {threshold:.3f}",
                                     marker=dict(size=13, color=colour, symbol="x", line=dict(width=1, color="#111"))))
    fig.update_layout(height=400, xaxis_title="1 − specificity", yaxis_title="Sensitivity (melanoma)",
                      margin=dict(t=10), legend=BOTTOM_LEGEND)
    return fig


def risk_coverage_figure(curves: dict[str, dict]) -> go.Figure:
    """Risk-coverage curves (label -> model card risk_coverage {coverage, risk, aurc}): the error rate of the images
    accepted when the most uncertain are set aside first."""
    fig = go.Figure()
    for (label, curve), colour in zip(curves.items(), TEST_SET_COLOURS):
        fig.add_trace(go.Scatter(x=curve["coverage"], y=curve["risk"], mode="lines", line=dict(color=colour, width=2),
                                 name=f"{label} (AURC {curve.get('aurc', float('nan')):.3f})"))
    fig.update_xaxes(title="Coverage (share of images kept, most certain first)", tickformat=".0%", range=[0, 1])
    fig.update_yaxes(title="Error rate of the kept images", tickformat=".0%", rangemode="tozero")
    fig.update_layout(height=400, margin=dict(t=10), legend=BOTTOM_LEGEND)
    return fig


def reliability_figure(calibration: dict) -> go.Figure:
    """Reliability diagrams of the plain softmax ("before") and of the shown probabilities ("after": the decision
    rule); per confidence bin a bar at the bin's accuracy and a dot at its mean confidence (on the diagonal when
    calibrated); the gap between the two is the bin's error."""
    keys = [k for k in CALIBRATION_TITLES if k in calibration]
    titles = [f"{CALIBRATION_TITLES[k]} · ECE {calibration[k].get('ece', float('nan')):.3f}" for k in keys]
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=titles, shared_yaxes=True)
    for i, key in enumerate(keys):
        bins = [b for b in calibration[key].get("bins", []) if b.get("count", 0) > 0]
        mids = [(b["lower"] + b["upper"]) / 2 for b in bins]
        fig.add_trace(go.Bar(x=mids, y=[b["accuracy"] for b in bins], width=[(b["upper"] - b["lower"]) * 0.9 for b in bins],
                             name="accuracy", marker_color="#4C78A8", customdata=[b["count"] for b in bins],
                             showlegend=i == 0, hovertemplate="bin %{x:.2f}: accuracy %{y:.2f} (%{customdata} images)"
                                                              "<extra></extra>"), row=1, col=i + 1)
        fig.add_trace(go.Scatter(x=mids, y=[b["confidence"] for b in bins], mode="markers", name="mean confidence",
                                 marker=dict(color="#E45756", size=8), showlegend=i == 0,
                                 hovertemplate="bin %{x:.2f}: mean confidence %{y:.2f}<extra></extra>"),
                      row=1, col=i + 1)
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#999", dash="dot"),
                                 name="perfect calibration", showlegend=i == 0), row=1, col=i + 1)
        fig.update_xaxes(title="Confidence (top-class probability)", range=[0, 1], row=1, col=i + 1)
    fig.update_yaxes(title="Accuracy / mean confidence", range=[0, 1], row=1, col=1)
    fig.update_layout(height=420, legend=dict(orientation="h", y=-0.3))
    return fig


def segmentation_histograms(seg: dict) -> go.Figure:
    """Per-image Dice and Jaccard of both segmenters on the test split (Jaccard from Dice when not stored)."""
    from core.analysis.metrics import jaccard_from_dice

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Dice per test image", "Jaccard per test image"))
    for key, label in SEG_LABELS.items():
        dices = np.asarray(seg.get(key, {}).get("dice_per_image", []), dtype=float)
        if not len(dices):
            continue
        jaccards = seg[key].get("jaccard_per_image")
        jaccards = np.asarray(jaccards, dtype=float) if jaccards else jaccard_from_dice(dices)
        for col, values in ((1, dices), (2, jaccards)):
            fig.add_trace(go.Histogram(x=values, name=label, marker_color=SEG_COLOURS[key], opacity=0.6,
                                       xbins=dict(start=0, end=1.0001, size=0.025), legendgroup=key,
                                       showlegend=col == 1), row=1, col=col)
    fig.update_layout(barmode="overlay", height=380, legend=dict(orientation="h", y=-0.2))
    fig.update_yaxes(title="Images", row=1, col=1)
    return fig


def stage_colours(stages) -> dict[str, str]:
    """A distinct colour for every training run: the shipped stages keep theirs, the other runs take the palette's
    colours in turn."""
    spare = iter(c for c in RUN_PALETTE if c.upper() not in {v.upper() for v in STAGE_COLOURS.values()})
    return {stage: STAGE_COLOURS.get(stage) or next(spare) for stage in stages}


def training_curves_figure(curves: dict) -> go.Figure:
    """Training loss and validation metric per epoch of every stage (model card's training_curves)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Training loss", "Validation metric"))
    colours = stage_colours(curves)
    for stage, history in curves.items():
        frame = pd.DataFrame(history)
        if frame.empty or "epoch" not in frame:
            continue
        drawn = [column for column in ("train_loss", "val_metric") if column in frame]
        for column in drawn:
            # the stage's first curve carries its legend entry, whichever of the two the card holds
            fig.add_trace(go.Scatter(x=frame["epoch"], y=frame[column], mode="lines+markers", name=stage,
                                     line=dict(color=colours[stage]), legendgroup=stage,
                                     showlegend=column == drawn[0]),
                          row=1, col=1 if column == "train_loss" else 2)
    fig.update_xaxes(title="Epoch")
    # A vertical legend beside the plots is cut to their height and scrolls (7 of 11 runs showed); below them a
    # horizontal one wraps into rows and shows every run, with room kept under the "Epoch" titles.
    fig.update_layout(height=520, margin=dict(b=150),
                      legend=dict(orientation="h", x=0, xanchor="left", y=-0.2, yanchor="top", title="Run"))
    return fig


# ---------------------------------------------------------------- Dataset explorer
def class_counts_figure(counts: dict[str, int], title: str = "Class distribution") -> go.Figure:
    """Images per class, in class order, only the classes present (code -> count)."""
    present = [c.code for c in CLASSES if counts.get(c.code, 0) > 0]
    frame = pd.DataFrame({"Diagnosis": [short_name(c) for c in present], "Images": [int(counts[c]) for c in present]})
    fig = px.bar(frame, x="Diagnosis", y="Images", color="Diagnosis", text="Images", title=title,
                 color_discrete_map=SHORT_NAME_COLOURS, category_orders={"Diagnosis": frame["Diagnosis"].tolist()})
    fig.update_layout(showlegend=False, xaxis_title=None)
    return fig


def split_sizes_figure(counts: pd.DataFrame, title: str = "Split sizes (grouped by lesion)") -> go.Figure:
    """Stacked images per split and class; `counts` has columns split, dx, Images (only train/val/test are drawn)."""
    counts = counts[counts["split"].isin(SPLIT_ORDER)].assign(Diagnosis=lambda t: t["dx"].map(short_name))
    totals = counts.groupby("split")["Images"].sum()
    splits = [s for s in SPLIT_ORDER if s in totals.index]
    fig = px.bar(counts, x="split", y="Images", color="Diagnosis", title=title, color_discrete_map=SHORT_NAME_COLOURS,
                 category_orders={"split": splits, **CLASS_ORDER})
    fig.update_layout(xaxis_title=None, legend_title=None)
    fig.update_xaxes(ticktext=[f"{s} ({int(totals[s]):,})" for s in splits], tickvals=splits)
    return fig


def age_figure(named: pd.DataFrame) -> go.Figure:
    """Age by diagnosis (box plot); `named` is a manifest with a Diagnosis column (short names)."""
    fig = px.box(named.dropna(subset=["age"]), x="Diagnosis", y="age", color="Diagnosis", title="Age by diagnosis",
                 color_discrete_map=SHORT_NAME_COLOURS, category_orders=CLASS_ORDER)
    fig.update_layout(showlegend=False, xaxis_title=None, yaxis_title="Age (years)")
    return fig


def sex_figure(named: pd.DataFrame) -> go.Figure:
    """Share of each sex per diagnosis (stacked bars)."""
    sex = named.groupby(["Diagnosis", "sex"]).size().rename("Images").reset_index()
    sex["Share"] = sex["Images"] / sex.groupby("Diagnosis")["Images"].transform("sum")
    fig = px.bar(sex, x="Diagnosis", y="Share", color="sex", title="Sex by diagnosis", barmode="stack",
                 color_discrete_map=SEX_COLOURS, category_orders=CLASS_ORDER, hover_data=["Images"])
    fig.update_layout(xaxis_title=None, yaxis_tickformat=".0%", legend_title=None)
    return fig


def site_figure(named: pd.DataFrame) -> go.Figure:
    """Anatomical site by diagnosis as a heat map of each diagnosis's shares."""
    site = pd.crosstab(named["localization"], named["Diagnosis"])
    site = site[[c for c in CLASS_ORDER["Diagnosis"] if c in site.columns]]
    fig = px.imshow(site / site.sum(axis=0), color_continuous_scale="Blues", aspect="auto", text_auto=".0%",
                    title="Anatomical site by diagnosis (share of each diagnosis)")
    fig.update_traces(customdata=site.to_numpy(), hovertemplate="%{y} · %{x}: %{customdata} images (%{z:.1%})<extra></extra>")
    fig.update_layout(height=560, xaxis_title=None, yaxis_title=None, coloraxis_showscale=False, margin=dict(l=120))
    fig.update_yaxes(automargin=True)
    return fig


def dx_type_figure(named: pd.DataFrame) -> go.Figure:
    """How each diagnosis was confirmed (dx_type), stacked horizontal bars."""
    dxt = named.groupby(["dx_type", "Diagnosis"]).size().rename("Images").reset_index()
    fig = px.bar(dxt, x="Images", y="dx_type", color="Diagnosis", orientation="h",
                 title="How the diagnosis was confirmed (dx_type)", color_discrete_map=SHORT_NAME_COLOURS,
                 category_orders=CLASS_ORDER)
    fig.update_layout(yaxis_title=None, legend_title=None, height=560)
    return fig


def history_figure(rows: list[dict], title: str, unit: str, first_visit: int | None, height: int = 260) -> go.Figure:
    """One measure of a lesion history over time (core.analysis.lesion_history.chart_rows): the no-change band
    around the first visit's value as a green strip, the visits (orange beyond the band) and a dashed line at the
    first visit beyond it."""
    dates = [r["date"] for r in rows]
    fig = go.Figure()
    if rows and rows[0]["low"] is not None:
        fig.add_hrect(y0=rows[0]["low"], y1=rows[0]["high"], fillcolor="#C8E6C9", opacity=0.6, line_width=0,
                      layer="below")
    from core.analysis.followup import BEYOND

    colours = ["#E65100" if r["status"] == BEYOND else "#2962FF" for r in rows]
    fig.add_trace(go.Scatter(x=dates, y=[r["value"] for r in rows], mode="lines+markers", marker=dict(
        size=9, color=colours), line=dict(color="#2962FF"), text=[f"visit {r['visit']}: {r['status']}" for r in rows],
        hovertemplate="%{x}<br>%{y:.3g}<br>%{text}<extra></extra>"))
    if first_visit is not None:
        fig.add_vline(x=dates[first_visit - 1], line_dash="dash", line_color="#E65100")
    fig.update_layout(title=dict(text=title + (f" ({unit})" if unit else ""), font=dict(size=14)), height=height,
                      margin=dict(l=10, r=10, t=40, b=10), showlegend=False)
    return fig
