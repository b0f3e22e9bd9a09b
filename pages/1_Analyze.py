"""Analyze one dermoscopic image: segmentation, class probabilities, CAM, uncertainty, OOD check, measurements."""
from __future__ import annotations

import random

import streamlit as st

import app_support as ui
from core.classes import CLASS_CODES, MALIGNANT_CODES

MASK_CHOICES = {"enhanced": "enhanced-SN", "coarse": "coarse-SN"}
MAX_CACHED = 6


# ---------------------------------------------------------------- input
def example_ui(data_dir) -> dict | None:
    """Pick a random dataset image of a chosen class (test-split first); returns the stored example."""
    sources = ui.available_sources(data_dir)
    if not sources:
        st.info(f"`{data_dir}` holds no ham10000/ or isic2017/ folder.")
        return None
    c1, c2, c3 = st.columns([2, 3, 2], vertical_alignment="bottom")
    source = c1.selectbox("Dataset", sources, format_func=ui.SOURCE_LABELS.get, key="example_source")
    try:
        table = ui.manifest(str(data_dir), tuple(sources))
    except Exception as exc:
        st.error(f"Cannot read the dataset: {exc}")
        return None
    table = table[table["source"] == source]
    codes = [c for c in CLASS_CODES if (table["dx"] == c).any()]
    code = c2.selectbox("Class", codes, format_func=ui.class_label, key="example_class")
    if c3.button("Random example", key="example_pick", type="primary", icon=":material/casino:"):
        pool = table[table["dx"] == code]
        tested = ui.test_image_ids()
        held_out = pool[pool["image_id"].isin(tested)]
        pool = held_out if len(held_out) else pool
        row = pool.iloc[random.randrange(len(pool))]
        if row["image_id"] in tested:
            split = "held-out test image"
        elif row["source"] == "isic2017":
            split = "ISIC 2017 image (not used to train the classifier)"
        else:
            split = "may have been seen in training"
        st.session_state["example"] = {
            "path": row["image_path"], "image_id": row["image_id"], "dx": row["dx"], "source": row["source"],
            "split": split, "mask_path": row["mask_path"],
        }
    example = st.session_state.get("example")
    if example is None:
        st.caption("Choose a class and press **Random example** (held-out test images are preferred: the model "
                   "never saw them in training).")
    return example


def input_ui(data_dir) -> tuple[bytes | None, str, dict | None]:
    """(image bytes, display name, dataset example or None)."""
    modes = ["Upload an image"] + (["Dataset example"] if data_dir else [])
    mode = st.radio("Image source", modes, horizontal=True, key="input_mode", label_visibility="collapsed")
    if mode == "Upload an image":
        upload = st.file_uploader(
            "Dermoscopic image", type=ui.UPLOAD_TYPES, key="upload",
            help="JPEG, PNG, BMP, TIFF or WebP. The file is analysed in memory and never stored.",
        )
        if not data_dir:
            st.caption("Set a data folder in the sidebar to pick labelled examples from the dataset instead.")
        return (upload.getvalue(), upload.name, None) if upload is not None else (None, "", None)
    example = example_ui(data_dir)
    if example is None:
        return None, "", None
    try:
        from pathlib import Path

        return Path(example["path"]).read_bytes(), example["image_id"], example
    except OSError as exc:
        st.error(f"Cannot read {example['path']}: {exc}")
        return None, "", None


# ---------------------------------------------------------------- analysis (cached per session, in memory)
def _remember(store_key: str, key, compute):
    store = st.session_state.setdefault(store_key, {})
    if key not in store:
        if len(store) >= MAX_CACHED:
            store.pop(next(iter(store)))
        store[key] = compute()
    return store[key]


def settings_ui() -> float | None:
    with st.sidebar.expander("Measurement scale", expanded=False):
        fov = st.number_input("Field of view (image width) in mm", min_value=0.0, max_value=500.0, value=0.0,
                              step=1.0, key="fov_mm",
                              help="Width of the skin area the whole image shows. 0 = unknown (pixels only).")
    return fov if fov > 0 else None


def result_header_ui(r, name: str, example: dict | None) -> None:
    top_code, top_p = r.top3[0]
    malignant = top_code in MALIGNANT_CODES
    mal_total = sum(p for c, p in r.probs.items() if c in MALIGNANT_CODES)
    box = st.container(border=True)
    c1, c2, c3, c4 = box.columns([4, 2, 2, 2])
    c1.markdown(f"**Prediction for `{name}`**")
    c1.markdown(f"### {ui.class_label(top_code)}")
    tag = ":red-badge[▲ malignant class]" if malignant else ":blue-badge[benign class]"
    c1.markdown(tag)
    c2.metric("Probability", f"{top_p:.1%}")
    c3.metric("All malignant classes", f"{mal_total:.1%}",
              help="Sum of the calibrated probabilities of akiec, bcc and mel.")
    c4.metric("Uncertainty", f"{r.uncertainty:.2f}", help="Normalised predictive entropy: 0 = certain, 1 = uniform "
              f"over the 7 classes. This one is {ui.uncertainty_words(r.uncertainty)}.")
    if example is not None:
        match = example["dx"] == top_code
        box.markdown(
            f"True label ({ui.SOURCE_LABELS.get(example['source'], example['source'])}, {example['split']}): "
            f"**{ui.class_label(example['dx'])}** — " + (":green[prediction agrees]" if match
                                                                else ":red[prediction differs]")
        )
    if r.ood:
        st.warning(f"**Possibly out of distribution.** {r.ood_reason or 'This image is unlike the training data.'} "
                   f"(score {r.ood_score:.1f})", icon=":material/warning:")


def segmentation_ui(rgb, r, controls, view) -> tuple[str, object]:
    """Mask choice + opacity in `controls`, the overlay in `view` (separate rows keep the images aligned)."""
    from core.cam import overlay_mask

    controls.markdown("**Segmentation**")
    which = controls.segmented_control("Mask", list(MASK_CHOICES), default="enhanced", format_func=MASK_CHOICES.get,
                                       key="mask_choice", required=True)
    opacity = controls.slider("Fill opacity", 0.0, 1.0, 0.3, 0.05, key="mask_opacity")
    mask = r.coarse_mask if which == "coarse" else r.mask
    view.image(overlay_mask(rgb, mask, color=ui.MASK_COLOUR, alpha=opacity, contour=True), width="stretch",
               caption=f"{MASK_CHOICES[which]} mask: contour + {opacity:.0%} fill")
    return which, mask


def cam_ui(analyzer, rgb, r, key: str, controls, view):
    from core.cam import CAM_METHODS, overlay_heatmap

    controls.markdown("**Class activation map**")
    method = controls.selectbox("Method", list(CAM_METHODS), key="cam_method")
    # Streamlit maps a selectbox's value back through its *formatted* label, so the labels must not depend on the
    # result: a "Nevus (top)" kept from the previous upload would come back as an unknown string (a CAM error).
    target = controls.selectbox("Target class", ["top"] + list(CLASS_CODES), key="cam_target",
                                format_func=lambda c: "Top prediction" if c == "top" else ui.class_name(c))
    code = target if target in CLASS_CODES else r.label
    st.session_state["_cam_key"] = (key, code, method)
    with view, st.spinner(f"Computing {method}…"):
        try:
            cam = _remember("cam_cache", (key, code, method), lambda: analyzer.cam_for(rgb, code, method))
        except Exception as exc:
            st.error(f"{method} failed: {exc}")
            return None
    view.image(overlay_heatmap(rgb, cam, alpha=0.45), width="stretch",
               caption=f"{method} for {ui.class_name(code)} (red = most influential)")
    if method == "Score-CAM" and analyzer.device == "cpu":
        view.caption("Score-CAM runs one forward pass per channel: slow on CPU.")
    return cam


def report_ui(rgb, r, name: str, mask, mask_kind: str, measurements: dict, cam, cam_key) -> None:
    st.markdown("**Downloads**")
    note = st.text_input("Note for the PDF report (optional)", key="report_note", max_chars=500,
                         placeholder="e.g. clinical context; no patient identifiers")
    row = st.container(horizontal=True)
    stem = name.rsplit(".", 1)[0] or "image"
    pdf_slot = row.container(width="content")
    row.download_button("Mask (PNG)", ui.png_bytes(mask), file_name=f"{stem}_{mask_kind}_mask.png",
                            mime="image/png", key="dl_mask", icon=":material/image:")
    try:
        pdf = _remember("pdf_cache", (st.session_state.get("_current_key"), mask_kind, cam_key, note),
                        lambda: ui.build_report(rgb, r, mask, measurements, cam, note))
    except Exception as exc:
        pdf_slot.error(f"PDF report unavailable: {exc}")
    else:
        pdf_slot.download_button("PDF report", pdf, file_name=f"{stem}_lesionlens.pdf",
                                mime="application/pdf", key="dl_pdf", type="primary", icon=":material/picture_as_pdf:")


def analyze_page() -> None:
    st.title("Analyze an image")
    st.caption(ui.DISCLAIMER)
    data_dir = ui.current_data_dir()
    mm_per_fov = settings_ui()
    data, name, example = input_ui(data_dir)
    if data is None:
        return
    from core.intake import ImageRejected, load_image

    try:
        rgb = load_image(data, name)
    except ImageRejected as exc:
        st.error(f"Cannot analyse **{name}**: {exc}")
        return
    analyzer, error = ui.analyzer_or_error()
    if error:
        st.error(error)
        return
    mm_per_pixel = None
    if mm_per_fov:
        from core.lesion_measurements import mm_per_pixel_from_fov

        mm_per_pixel = mm_per_pixel_from_fov(mm_per_fov, rgb.shape[1])
    key = (ui.digest(data), mm_per_pixel)
    st.session_state["_current_key"] = key
    with st.spinner("Analysing…"):
        try:
            r = _remember("result_cache", key, lambda: analyzer.analyze(rgb, mm_per_pixel=mm_per_pixel))
        except Exception as exc:
            st.error(f"Analysis failed: {exc}")
            return

    result_header_ui(r, name, example)
    controls = st.columns(3, gap="medium")
    views = st.columns(3, gap="medium")
    controls[0].markdown("**Original**")
    controls[0].caption(f"`{name}` · {rgb.shape[1]} × {rgb.shape[0]} px. Analysed in memory; nothing is stored.")
    views[0].image(rgb, width="stretch", caption="Original image")
    mask_kind, mask = segmentation_ui(rgb, r, controls[1], views[1])
    cam = cam_ui(analyzer, rgb, r, key[0], controls[2], views[2])

    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Class probabilities** (top 3 in colour; ▲ = malignant class)")
        st.plotly_chart(ui.probability_figure(r.probs), key="probs_chart", config={"displayModeBar": False})
    with right:
        st.markdown(f"**Measurements** ({MASK_CHOICES[mask_kind]} mask)")
        measurements = r.measurements
        if mask_kind == "coarse":
            from core.lesion_measurements import measure_lesion

            measurements = measure_lesion(mask, rgb, mm_per_pixel)
        st.table(ui.measurement_rows(measurements), hide_index=True, hide_header=True, border="horizontal")
        if mm_per_pixel is None:
            st.caption("Enter the field of view in the sidebar (Measurement scale) for sizes in mm.")
        st.caption("Model " + str(analyzer.version) + f" on {analyzer.device.upper()} · analysis "
                   f"{r.timings.get('total', 0):.2f} s")
    report_ui(rgb, r, name, mask, mask_kind, measurements, cam, st.session_state.get("_cam_key"))


analyze_page()
