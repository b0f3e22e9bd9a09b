"""Dataset explorer: HAM10000 / ISIC 2017 distributions, split sizes and a filterable image gallery."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

import app_support as ui
from core.classes import CLASS_CODES, CLASSES

SEX_COLOURS = {"male": "#4C78A8", "female": "#E45756", "unknown": "#BAB0AC"}
SPLIT_ORDER = ["train", "val", "test"]
GALLERY_COLUMNS = 6
CLASS_ORDER = {"Diagnosis": [ui.short_name(c.code) for c in CLASSES]}
COLOURS = ui.SHORT_NAME_COLOURS


def _with_names(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    out["Diagnosis"] = out["dx"].map(ui.short_name)
    for column in ("sex", "localization", "dx_type"):
        out[column] = out[column].replace("", "unknown")
    return out


# ---------------------------------------------------------------- without data: the model card's summary
def card_summary_ui() -> None:
    card = ui.model_card()
    summary = (card or {}).get("dataset_summary")
    if not summary:
        st.info("The shipped model card has no dataset summary yet.")
        return
    st.subheader("Training data of the shipped model (from the model card)")
    overall = summary.get("all", {})
    c1, c2, c3 = st.columns(3)
    c1.metric("Images", f"{overall.get('n_images', 0):,}")
    c2.metric("Lesions", f"{overall.get('n_lesions', 0):,}")
    c3.metric("Sources", ", ".join(ui.SOURCE_LABELS.get(s, s) for s in summary.get("sources", [])) or "—")
    dx = overall.get("dx", {})
    frame = pd.DataFrame({"Diagnosis": [ui.short_name(c) for c in dx], "Images": list(dx.values())})
    st.plotly_chart(px.bar(frame, x="Diagnosis", y="Images", color="Diagnosis", text="Images",
                           color_discrete_map=COLOURS, title="Class distribution"),
                    key="card_dx")
    splits = summary.get("splits", {})
    if splits:
        rows = [{"Split": s, "Diagnosis": ui.short_name(c), "Images": n}
                for s, part in splits.items() for c, n in part.get("dx", {}).items()]
        st.plotly_chart(px.bar(pd.DataFrame(rows), x="Split", y="Images", color="Diagnosis",
                               color_discrete_map=COLOURS, title="Split sizes"), key="card_splits")


# ---------------------------------------------------------------- with data
def overview_ui(table: pd.DataFrame) -> None:
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Images", f"{len(table):,}")
    c2.metric("Lesions", f"{table['lesion_id'].nunique():,}")
    c3.metric("With lesion mask", f"{(table['mask_path'] != '').sum():,}")
    mel = int((table["dx"] == "mel").sum())
    c4.metric("Melanoma images", f"{mel:,}", help=f"{mel / max(len(table), 1):.1%} of the images")


def split_chart_ui(container, data_dir, sources: tuple[str, ...], source: str) -> None:
    try:
        table = ui.split_manifest(str(data_dir), sources)
    except Exception as exc:
        container.error(f"Cannot compute the split: {exc}")
        return
    if source != "both":
        table = table[table["source"] == source]
    named = _with_names(table)
    split_counts = named.groupby(["split", "Diagnosis"]).size().rename("Images").reset_index()
    totals = named.groupby("split").size()
    fig = px.bar(split_counts, x="split", y="Images", color="Diagnosis", title="Split sizes (grouped by lesion)",
                 color_discrete_map=COLOURS, category_orders={"split": SPLIT_ORDER, **CLASS_ORDER})
    fig.update_layout(xaxis_title=None, legend_title=None)
    fig.update_xaxes(ticktext=[f"{s} ({totals.get(s, 0):,})" for s in SPLIT_ORDER], tickvals=SPLIT_ORDER)
    container.plotly_chart(fig, key="split_chart")


def charts_ui(table: pd.DataFrame):
    """All distribution charts; returns the (still empty) container for the split chart."""
    named = _with_names(table)
    has_meta = (named["sex"] != "unknown").any()
    left, right = st.columns(2)
    counts = named.groupby("Diagnosis", sort=False).size().reindex(CLASS_ORDER["Diagnosis"]).dropna()
    counts = counts.rename("Images").reset_index()
    fig = px.bar(counts, x="Diagnosis", y="Images", color="Diagnosis", text="Images", title="Class distribution",
                 color_discrete_map=COLOURS, category_orders=CLASS_ORDER)
    fig.update_layout(showlegend=False, xaxis_title=None)
    left.plotly_chart(fig, key="dx_chart")

    split_box = right.container()

    if not has_meta:
        st.info("Age, sex and anatomical site are not published for this source (ISIC 2017).")
    else:
        left, right = st.columns(2)
        fig = px.box(named.dropna(subset=["age"]), x="Diagnosis", y="age", color="Diagnosis",
                     title="Age by diagnosis", color_discrete_map=COLOURS, category_orders=CLASS_ORDER)
        fig.update_layout(showlegend=False, xaxis_title=None, yaxis_title="Age (years)")
        left.plotly_chart(fig, key="age_chart")

        sex = named.groupby(["Diagnosis", "sex"]).size().rename("Images").reset_index()
        sex["Share"] = sex["Images"] / sex.groupby("Diagnosis")["Images"].transform("sum")
        fig = px.bar(sex, x="Diagnosis", y="Share", color="sex", title="Sex by diagnosis", barmode="stack",
                     color_discrete_map=SEX_COLOURS, category_orders=CLASS_ORDER, hover_data=["Images"])
        fig.update_layout(xaxis_title=None, yaxis_tickformat=".0%", legend_title=None)
        right.plotly_chart(fig, key="sex_chart")

        site = pd.crosstab(named["localization"], named["Diagnosis"])
        site = site[[c for c in CLASS_ORDER["Diagnosis"] if c in site.columns]]
        share = site / site.sum(axis=0)
        fig = px.imshow(share, color_continuous_scale="Blues", aspect="auto", text_auto=".0%",
                        title="Anatomical site by diagnosis (share of each diagnosis)")
        fig.update_traces(customdata=site.to_numpy(),
                          hovertemplate="%{y} · %{x}: %{customdata} images (%{z:.1%})<extra></extra>")
        fig.update_layout(height=560, xaxis_title=None, yaxis_title=None, coloraxis_showscale=False,
                          margin=dict(l=120))
        fig.update_yaxes(automargin=True)
        left2, right2 = st.columns([3, 2])
        left2.plotly_chart(fig, key="site_chart")

        dxt = named.groupby(["dx_type", "Diagnosis"]).size().rename("Images").reset_index()
        fig = px.bar(dxt, x="Images", y="dx_type", color="Diagnosis", orientation="h",
                     title="How the diagnosis was confirmed (dx_type)", color_discrete_map=COLOURS,
                     category_orders=CLASS_ORDER)
        fig.update_layout(yaxis_title=None, legend_title=None, height=560)
        right2.plotly_chart(fig, key="dxtype_chart")
        st.caption("dx_type: histo = histopathology, follow_up = unchanged on digital follow-up, consensus = expert "
                   "consensus, confocal = reflectance confocal microscopy.")
    return split_box


def gallery_filters_ui(table: pd.DataFrame) -> pd.DataFrame:
    c1, c2, c3, c4 = st.columns([3, 2, 3, 3])
    codes = [c for c in CLASS_CODES if (table["dx"] == c).any()]
    chosen = c1.multiselect("Class", codes, default=[], format_func=ui.class_name, key="g_class",
                            placeholder="All classes") or codes
    sexes = sorted(table["sex"].replace("", "unknown").unique())
    sex = c2.multiselect("Sex", sexes, default=[], key="g_sex", placeholder="All") or sexes
    ages = table["age"].dropna()
    if len(ages):
        lo, hi = int(ages.min()), int(ages.max())
        age = c3.slider("Age", lo, hi, (lo, hi), step=5, key="g_age") if hi > lo else (lo, hi)
    else:
        age = None
    sites = sorted(table["localization"].replace("", "unknown").unique())
    site = c4.multiselect("Anatomical site", sites, default=[], placeholder="All sites", key="g_site")
    keep = table["dx"].isin(chosen) & table["sex"].replace("", "unknown").isin(sex)
    if age is not None and (age[0] > ages.min() or age[1] < ages.max()):
        keep &= table["age"].between(age[0], age[1])
    if site:
        keep &= table["localization"].replace("", "unknown").isin(site)
    return table[keep]


def gallery_ui(table: pd.DataFrame) -> int:
    """A grid of filtered images; returns how many it showed."""
    from core.cam import overlay_mask

    st.subheader("Gallery")
    subset = gallery_filters_ui(table)
    c1, c2, c3 = st.columns([2, 2, 6], vertical_alignment="bottom")
    show_mask = c1.toggle("Mask overlay", value=False, key="g_mask")
    count = c2.selectbox("Images", [12, 24, 48], key="g_count")
    if c3.button("Shuffle", icon=":material/shuffle:", key="g_shuffle"):
        st.session_state["g_seed"] = st.session_state.get("g_seed", 0) + 1
    st.caption(f"{len(subset):,} images match the filters.")
    if subset.empty:
        return 0
    rng = np.random.default_rng(st.session_state.get("g_seed", 0))
    picked = subset.iloc[np.sort(rng.choice(len(subset), size=min(count, len(subset)), replace=False))]
    cols = st.columns(GALLERY_COLUMNS)
    for i, (_, row) in enumerate(picked.iterrows()):
        try:
            rgb = ui.read_image_path(row["image_path"])
        except Exception as exc:
            cols[i % GALLERY_COLUMNS].error(f"{row['image_id']}: {exc}")
            continue
        if show_mask:
            mask = ui.read_mask_path(row["mask_path"], rgb.shape[:2])
            if mask is not None:
                rgb = overlay_mask(rgb, mask, color=ui.MASK_COLOUR, alpha=0.25)
        age = "" if pd.isna(row["age"]) else f" · {int(row['age'])} y"
        meta = f"{row['sex']}{age} · {row['localization']}" if row["sex"] else ui.SOURCE_LABELS.get(row["source"], "")
        cols[i % GALLERY_COLUMNS].image(rgb, width="stretch",
                                        caption=f"{ui.class_name(row['dx'])} — {row['image_id']} · {meta}")
    return len(picked)


def explorer_page() -> None:
    st.title("Dataset explorer")
    data_dir = ui.current_data_dir()
    if data_dir is None:
        st.info("No data folder is set. Set **DATA_DIR** before starting the app "
                "(`DATA_DIR=../shared/data streamlit run streamlit_app.py`), add `DATA_DIR = \"...\"` to "
                "`.streamlit/secrets.toml`, or type the folder into the sidebar box. It should hold "
                "`ham10000/` and/or `isic2017/`.")
        card_summary_ui()
        return
    sources = ui.available_sources(data_dir)
    if not sources:
        st.error(f"`{data_dir}` holds neither ham10000/ nor isic2017/.")
        return
    options = sources + (["both"] if len(sources) > 1 else [])
    source = st.segmented_control("Source", options, default=options[0], required=True, key="x_source",
                                  format_func=lambda s: "Both" if s == "both" else ui.SOURCE_LABELS[s])
    try:
        table = ui.manifest(str(data_dir), tuple(sources))
    except Exception as exc:
        st.error(f"Cannot read the dataset in `{data_dir}`: {exc}")
        return
    if source != "both":
        table = table[table["source"] == source]
    overview_ui(table)
    split_box = charts_ui(table)
    gallery_ui(table)
    split_chart_ui(split_box, data_dir, tuple(sources), source)  # last: the split takes a few seconds


explorer_page()
