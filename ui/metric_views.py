"""Views of classification metrics that Model performance (the model card's test sets), Evaluate your data (a
researcher's folder) and Home share: a figure with its CI, the per-class table, the clickable confusion matrix and the images of a chosen cell.
`m` is a core.analysis.metrics.classification_metrics dict (per_class, confusion_matrix, roc, pr, ...)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.data.classes import CLASS_CODES, CLASSES
from ui.figures import confusion_figure, selected_cell
from ui.formatting import ci_range, class_label, class_name, short_name


def ci_metric(column, label: str, entry: dict | None, fmt, help: str | None = None) -> None:
    """A figure {value, ci95} (model card or folder evaluation) as a metric with its 95 % CI underneath."""
    value = None if not entry else entry.get("value")
    column.metric(label, "—" if value is None else fmt(value), delta=ci_range(entry, fmt) or None, delta_color="off",
                  delta_arrow="off", help=help)


def wrapped_table(frame: pd.DataFrame) -> None:
    """A table of figures written as text (values with their 95 % CIs) at the page's width: its cells wrap, where
    st.dataframe keeps each cell on one line and pushes the last columns out of sight."""
    # st.table renders cells as Markdown: "+ context head" would become a bullet
    literal = frame.map(lambda v: "\\" + v if isinstance(v, str) and v[:2] in ("+ ", "- ", "* ") else v)
    st.table(literal, hide_index=True, border="horizontal")


def per_class_ui(m: dict, key: str) -> None:
    """Precision, recall, F1, AUC and support of every class."""
    rows = []
    for c in CLASSES:
        pc = m.get("per_class", {}).get(c.code, {})
        pcts = {k: None if pc.get(k) is None else 100 * pc[k] for k in ("precision", "recall", "f1")}
        rows.append({"Class": short_name(c.code), "Code": c.code, "Malignant": "▲ yes" if c.malignant else "no",
                     "Precision": pcts["precision"], "Recall": pcts["recall"], "F1": pcts["f1"],
                     "AUC": pc.get("auc"), "Support": pc.get("support")})
    # widths that add up to the page's width at 1280 px: the default widths put AUC and Images out of sight
    bar = dict(min_value=0.0, max_value=100.0, format="%.1f%%", width=110)
    st.dataframe(pd.DataFrame(rows), hide_index=True, key=key, placeholder="—", column_config={
        "Class": st.column_config.TextColumn("Class", width=180, help="Full names: Analyze and the PDF report."),
        "Code": st.column_config.TextColumn("Code", width=60),
        "Malignant": st.column_config.TextColumn("Malignant", width=80),
        "Precision": st.column_config.ProgressColumn("Precision", **bar),
        "Recall": st.column_config.ProgressColumn("Recall (sensitivity)", **bar),
        "F1": st.column_config.ProgressColumn("F1", **bar),
        "AUC": st.column_config.NumberColumn("AUC", format="%.3f", width=65),
        "Support": st.column_config.NumberColumn("Images", format="%d", width=65),
    })


def confusion_ui(m: dict, prefix: str) -> tuple[str, str] | None:
    """The clickable matrix and the true / predicted boxes (keys `<prefix>_chart`, `<prefix>_true`, `<prefix>_pred`,
    `<prefix>_norm`); returns the chosen cell."""
    matrix = np.asarray(m.get("confusion_matrix", []))
    if matrix.shape != (len(CLASS_CODES), len(CLASS_CODES)):
        st.info("No confusion matrix for these images.")
        return None

    def clicked() -> None:  # on_select: the clicked cell goes into the two boxes, which drive the drill-down
        cell = selected_cell((st.session_state.get(f"{prefix}_chart") or {}).get("selection", {}).get("points", []))
        if cell:
            st.session_state[f"{prefix}_true"], st.session_state[f"{prefix}_pred"] = cell

    left, right = st.columns([3, 1])
    normalised = right.toggle("Row-normalised", value=True, key=f"{prefix}_norm", help="Share of each true class.")
    left.plotly_chart(confusion_figure(matrix, normalised), key=f"{prefix}_chart", on_select=clicked,
                      selection_mode="points", config={"displayModeBar": False})
    st.session_state.setdefault(f"{prefix}_true", "mel")  # the costly miss, by default
    st.session_state.setdefault(f"{prefix}_pred", "nv")
    true = right.selectbox("True class", CLASS_CODES, format_func=class_label, key=f"{prefix}_true")
    pred = right.selectbox("Predicted class", CLASS_CODES, format_func=class_label, key=f"{prefix}_pred")
    right.caption("Click a cell (or use the two boxes) to see those images below.")
    right.caption(" · ".join(f"{c} = {class_name(c)}" for c in CLASS_CODES))
    return true, pred


def cell_gallery(cell: pd.DataFrame, true: str, pred: str, read) -> int:
    """Images of one confusion cell in six columns, captioned with p(pred) (and p(true)); `cell` has image_id and
    p_<code> columns, `read(row)` returns the RGB image to show or None when the file is missing. Returns how many
    it showed."""
    cols = st.columns(6)
    shown = 0
    for i, row in enumerate(cell.itertuples(index=False)):
        col = cols[i % 6]
        rgb = read(row)
        if rgb is None:
            col.warning(f"{row.image_id} not found in the data folder")
            continue
        p_pred, p_true = getattr(row, f"p_{pred}"), getattr(row, f"p_{true}")
        caption = f"{row.image_id} · p({pred}) {p_pred:.0%}" + ("" if pred == true else f" · p({true}) {p_true:.0%}")
        col.image(rgb, width="stretch", caption=caption)
        shown += 1
    return shown
