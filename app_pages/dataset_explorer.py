"""Dataset explorer: HAM10000 / ISIC 2017 / acral distributions, split sizes and a filterable image gallery."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.data.classes import CLASS_CODES
from core.data.patient_context import PatientContext
from ui.data_folder import SOURCE_LABELS, available_sources, current_data_dir
from ui.datasets import manifest, read_image_path, read_mask_path, split_manifest
from ui.figures import (age_figure, class_counts_figure, dx_type_figure, sex_figure, site_figure,
                        split_sizes_figure)
from ui.formatting import class_name, short_name
from ui.images import mask_overlay
from ui.model_files import model_card

GALLERY_COLUMNS = 6
METADATA = ("age", "sex", "localization")


def _with_names(table: pd.DataFrame) -> pd.DataFrame:
    """The manifest with a Diagnosis column (short names) and "unknown" for missing sex / site / dx_type."""
    out = table.assign(Diagnosis=table["dx"].map(short_name))
    for column in ("sex", "localization", "dx_type"):
        out[column] = out[column].replace("", "unknown")
    return out


def _without_metadata(table: pd.DataFrame) -> list[str]:
    """Sources of `table` whose rows give no age, sex or anatomical site at all."""
    return [source for source, part in table.groupby("source")
            if part["age"].isna().all() and (part["sex"] == "").all() and (part["localization"] == "").all()]


# ---------------------------------------------------------------- without data: the model card's summary
def card_summary_ui() -> None:
    summary = model_card().display("dataset_summary")
    if not summary:
        st.info("The shipped model card has no dataset summary yet.")
        return
    st.subheader("Training data of the shipped model (from the model card)")
    overall = summary.get("all", {})
    c1, c2, c3 = st.columns(3)
    c1.metric("Images", f"{overall.get('n_images', 0):,}")
    c2.metric("Lesions", f"{overall.get('n_lesions', 0):,}")
    c3.metric("Sources", ", ".join(SOURCE_LABELS.get(s, s) for s in summary.get("sources", [])) or "—")
    st.plotly_chart(class_counts_figure(overall.get("dx", {})), key="card_dx")
    rows = [{"split": s, "dx": c, "Images": n} for s, part in summary.get("splits", {}).items()
            for c, n in part.get("dx", {}).items()]
    if rows:
        st.plotly_chart(split_sizes_figure(pd.DataFrame(rows), "Split sizes"), key="card_splits")


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
        table = split_manifest(str(data_dir), sources)
    except Exception as exc:
        container.error(f"Cannot compute the split: {exc}")
        return
    if source != "all":
        table = table[table["source"] == source]
    counts = table.groupby(["split", "dx"]).size().rename("Images").reset_index()
    container.plotly_chart(split_sizes_figure(counts), key="split_chart")


def charts_ui(table: pd.DataFrame):
    """All distribution charts; returns the (still empty) container for the split chart."""
    left, right = st.columns(2)
    left.plotly_chart(class_counts_figure(table["dx"].value_counts().to_dict()), key="dx_chart")
    split_box = right.container()
    named = _with_names(table)
    bare = _without_metadata(table)
    if bare:
        only = len(bare) == table["source"].nunique()
        st.info(f"The {' and '.join(SOURCE_LABELS.get(s, s) for s in bare)} labels in the data folder give no age, "
                "sex or anatomical site" + (": there is nothing to chart." if only else
                                            ": the charts below count those images as unknown."))
        if only:
            return split_box
    left, right = st.columns(2)
    left.plotly_chart(age_figure(named), key="age_chart")
    right.plotly_chart(sex_figure(named), key="sex_chart")
    left, right = st.columns([3, 2])
    left.plotly_chart(site_figure(named), key="site_chart")
    right.plotly_chart(dx_type_figure(named), key="dxtype_chart")
    st.caption("dx_type: histo = histopathology, follow_up = unchanged on digital follow-up, consensus = expert "
               "consensus, confocal = reflectance confocal microscopy, isic2017 = ISIC 2017 challenge label.")
    return split_box


def gallery_filters_ui(table: pd.DataFrame) -> pd.DataFrame:
    """Class, sex, age and site filters (the last three only where the data has them); the matching rows."""
    c1, c2, c3, c4 = st.columns([3, 2, 3, 3])
    codes = [c for c in CLASS_CODES if (table["dx"] == c).any()]
    chosen = c1.multiselect("Class", codes, default=[], format_func=class_name, key="g_class",
                            placeholder="All classes") or codes
    keep = table["dx"].isin(chosen)
    sexes = table["sex"].replace("", "unknown")
    if (sexes != "unknown").any():
        sex = c2.multiselect("Sex", sorted(sexes.unique()), default=[], key="g_sex", placeholder="All")
        keep &= sexes.isin(sex or sexes.unique())
    ages = table["age"].dropna()
    if len(ages) and ages.max() > ages.min():
        lo, hi = int(ages.min()), int(ages.max())
        age = c3.slider("Age", lo, hi, (lo, hi), step=5, key="g_age")
        if age != (lo, hi):
            keep &= table["age"].between(*age)
    sites = table["localization"].replace("", "unknown")
    if (sites != "unknown").any():
        site = c4.multiselect("Anatomical site", sorted(sites.unique()), default=[], placeholder="All sites",
                              key="g_site")
        keep &= sites.isin(site or sites.unique())
    return table[keep]


def send_to_analyze(row, data_dir) -> None:
    """Put a gallery image into the Analyze page's dataset-example input and its patient-context fields (their
    session state: the image's own age, sex and site, which the model uses) and open that page."""
    sources = tuple(available_sources(data_dir))
    splits = split_manifest(str(data_dir), sources).set_index(["source", "image_id"])["split"]
    context = PatientContext.from_metadata(row.age, row.sex, row.localization)
    st.session_state.update({
        "input_mode": "Dataset example", "example_source": row.source, "example_class": row.dx,
        "example": {"path": row.image_path, "image_id": row.image_id, "dx": row.dx, "source": row.source,
                    "split": splits.get((row.source, row.image_id), "")},
        "context_age": "" if context.age is None else f"{context.age:g}", "context_sex": context.sex or "",
        "context_site": context.site or ""})
    st.switch_page("app_pages/analyze.py")


def gallery_ui(table: pd.DataFrame, data_dir) -> int:
    """A grid of filtered images; returns how many it showed."""
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
    for i, row in enumerate(picked.itertuples(index=False)):
        col = cols[i % GALLERY_COLUMNS]
        try:
            rgb = read_image_path(row.image_path)
        except Exception as exc:
            col.error(f"{row.image_id}: {exc}")
            continue
        mask = read_mask_path(row.mask_path, rgb.shape[:2]) if show_mask else None
        if mask is not None:
            rgb = mask_overlay(rgb, mask, 0.25)
        details = [row.sex, "" if pd.isna(row.age) else f"{int(row.age)} y", row.localization]
        meta = " · ".join(d for d in details if d) or SOURCE_LABELS.get(row.source, row.source)
        col.image(rgb, width="stretch", caption=f"{class_name(row.dx)} — {row.image_id} · {meta}")
        if col.button("Analyze", key=f"g_analyze_{row.source}_{row.image_id}", icon=":material/biotech:",
                      help="Open this image on the Analyze page"):
            send_to_analyze(row, data_dir)
    return len(picked)


def explorer_page() -> None:
    st.title("Dataset explorer")
    data_dir = current_data_dir()
    if data_dir is None:
        st.info("No data folder is set. Set **DATA_DIR** before starting the app "
                "(`DATA_DIR=../shared/data streamlit run streamlit_app.py`), add `DATA_DIR = \"...\"` to "
                "`.streamlit/secrets.toml`, or type the folder into the sidebar box. It should hold "
                "`ham10000/`, `isic2017/` and/or `acral/`.")
        card_summary_ui()
        return
    sources = available_sources(data_dir)
    if not sources:
        st.error(f"`{data_dir}` holds none of ham10000/, isic2017/, acral/.")
        return
    options = sources + (["all"] if len(sources) > 1 else [])
    source = st.segmented_control("Source", options, default=options[0], required=True, key="x_source",
                                  format_func=lambda s: "All" if s == "all" else SOURCE_LABELS[s])
    try:
        table = manifest(str(data_dir), tuple(sources))
    except Exception as exc:
        st.error(f"Cannot read the dataset in `{data_dir}`: {exc}")
        return
    if source != "all":
        table = table[table["source"] == source]
    overview_ui(table)
    split_box = charts_ui(table)
    gallery_ui(table, data_dir)
    split_chart_ui(split_box, data_dir, tuple(sources), source)  # last: the split takes a few seconds


explorer_page()
