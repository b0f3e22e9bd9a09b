"""Analyze one dermoscopic image: segmentation, class probabilities, CAM, uncertainty, OOD check, measurements, PDF."""
from __future__ import annotations

import random
from pathlib import Path

import streamlit as st

from core.classes import CLASS_CODES, MALIGNANT_CODES
from core.intake import FILE_EXTENSIONS, SUPPORTED_TEXT, ImageRejected, load_image
from ui.analyzers import ModelUnavailable, pool
from ui.data_folder import SOURCE_LABELS, available_sources, current_data_dir
from ui.datasets import test_split
from ui.figures import probability_figure
from ui.formatting import (DISCLAIMER, cam_caption, class_label, class_name, measurement_table,
                           uncertainty_words)
from ui.images import cam_overlay, digest, mask_overlay, png_bytes
from ui.report import build_report
from ui.session_cache import cached, remember

MASK_CHOICES = {"enhanced": "enhanced-SN", "coarse": "coarse-SN"}
CAM_HELP = ("The methods that give different maps for mask-CN. Its head is global average pooling + one linear layer, "
            "so HiResCAM and XGrad-CAM give exactly Grad-CAM's map and LayerCAM nearly Grad-CAM++'s; EigenCAM is "
            "left out because it ignores the target class. Score-CAM runs one forward pass per feature channel: "
            "slow on a CPU.")


# ---------------------------------------------------------------- input
def _forget_example() -> None:
    """Another dataset or class: the example shown (and its result) no longer matches the selection."""
    st.session_state.pop("example", None)


def example_ui(data_dir: Path) -> dict | None:
    """A random held-out test image of the chosen dataset and class; returns the stored example."""
    sources = tuple(available_sources(data_dir))
    if not sources:
        st.info(f"`{data_dir}` holds no ham10000/ or isic2017/ folder.")
        return None
    try:
        table = test_split(data_dir, sources)
    except Exception as exc:
        st.error(f"Cannot read the dataset: {exc}")
        return None
    c1, c2, c3 = st.columns([2, 3, 2], vertical_alignment="bottom")
    source = c1.selectbox("Dataset", sources, format_func=SOURCE_LABELS.get, key="example_source",
                          on_change=_forget_example)
    table = table[table["source"] == source]
    codes = [c for c in CLASS_CODES if (table["dx"] == c).any()]
    code = c2.selectbox("Class", codes, format_func=class_label, key="example_class", on_change=_forget_example)
    if c3.button("Random example", key="example_pick", type="primary", icon=":material/casino:"):
        row = table[table["dx"] == code].iloc[random.randrange(int((table["dx"] == code).sum()))]
        st.session_state["example"] = {"path": row["image_path"], "image_id": row["image_id"], "dx": row["dx"],
                                       "source": row["source"]}
    example = st.session_state.get("example")
    if example is None:
        st.caption("Choose a class and press **Random example**: a test-split image, never seen in training.")
    return example


def input_ui(data_dir: Path | None) -> tuple[bytes | None, str, dict | None]:
    """(image bytes, display name, dataset example or None)."""
    modes = ["Upload an image"] + (["Dataset example"] if data_dir else [])
    mode = st.radio("Image source", modes, horizontal=True, key="input_mode", label_visibility="collapsed")
    if mode == "Upload an image":
        upload = st.file_uploader("Dermoscopic image", type=list(FILE_EXTENSIONS), key="upload",
                                  help=f"{SUPPORTED_TEXT}. The file is analysed in memory and never stored.")
        if not data_dir:
            st.caption("Set a data folder in the sidebar to pick labelled examples from the dataset instead.")
        return (upload.getvalue(), upload.name, None) if upload is not None else (None, "", None)
    example = example_ui(data_dir)
    if example is None:
        return None, "", None
    try:
        return Path(example["path"]).read_bytes(), example["image_id"], example
    except OSError as exc:
        st.error(f"Cannot read {example['path']}: {exc}")
        return None, "", None


def scale_ui() -> float | None:
    """The sidebar's field of view (mm across the image width), None when unknown."""
    with st.sidebar.expander("Measurement scale", expanded=False):
        fov = st.number_input("Field of view (image width) in mm", min_value=0.0, max_value=500.0, value=0.0,
                              step=1.0, key="fov_mm",
                              help="Width of the skin area the whole image shows. 0 = unknown (pixels only).")
    return fov if fov > 0 else None


# ---------------------------------------------------------------- result
def header_ui(r, name: str, example: dict | None) -> None:
    """Top class, its probability, malignant total, uncertainty, the true label of a dataset example, OOD warning."""
    top_code, top_p = r.top3[0]
    box = st.container(border=True)
    c1, c2, c3, c4 = box.columns([4, 2, 2, 2])
    c1.markdown(f"**Prediction for `{name}`**")
    c1.markdown(f"### {class_label(top_code)}")
    c1.markdown(":red-badge[▲ malignant class]" if top_code in MALIGNANT_CODES else ":blue-badge[benign class]")
    c2.metric("Probability", f"{top_p:.1%}")
    c3.metric("All malignant classes", f"{sum(p for c, p in r.probs.items() if c in MALIGNANT_CODES):.1%}",
              help="Sum of the calibrated probabilities of akiec, bcc and mel.")
    c4.metric("Uncertainty", f"{r.uncertainty:.2f}", help="Normalised predictive entropy: 0 = certain, 1 = uniform "
              f"over the 7 classes. This one is {uncertainty_words(r.uncertainty)}.")
    if example is not None:
        agrees = ":green[prediction agrees]" if example["dx"] == top_code else ":red[prediction differs]"
        box.markdown(f"True label ({SOURCE_LABELS.get(example['source'], example['source'])}, held-out test image): "
                     f"**{class_label(example['dx'])}** — {agrees}")
    if r.ood:
        st.warning(f"**Possibly out of distribution.** {r.ood_reason or 'This image is unlike the training data.'} "
                   f"(score {r.ood_score:.1f})", icon=":material/warning:")


def segmentation_ui(rgb, r, controls, view):
    """Mask choice + opacity in `controls`, the overlay in `view`; returns (mask kind, mask)."""
    controls.markdown("**Segmentation**")
    which = controls.segmented_control("Mask", list(MASK_CHOICES), default="enhanced", format_func=MASK_CHOICES.get,
                                       key="mask_choice", required=True)
    opacity = controls.slider("Fill opacity", 0.0, 1.0, 0.3, 0.05, key="mask_opacity")
    mask = r.coarse_mask if which == "coarse" else r.mask
    view.image(mask_overlay(rgb, mask, opacity), width="stretch",
               caption=f"{MASK_CHOICES[which]} mask: contour + {opacity:.0%} fill")
    return which, mask


def _cam(rgb, code: str, method: str):
    with pool().borrow() as analyzer:
        return analyzer.cam_for(rgb, code, method)


def cam_ui(rgb, r, mask, key: str, controls, view):
    """CAM controls in `controls`, the labelled map in `view`; returns (overlay image or None, its caption)."""
    from core.cam import distinct_class_cams

    controls.markdown("**Class activation map**")
    method = controls.selectbox("Method", distinct_class_cams(linear_head=True), key="cam_method", help=CAM_HELP)
    # Streamlit maps a selectbox's value back through its *formatted* label, so the labels must not depend on the
    # result: a "Nevus (top)" kept from the previous upload would come back as an unknown string (a CAM error).
    target = controls.selectbox("Target class", ["top"] + list(CLASS_CODES), key="cam_target",
                                format_func=lambda c: "Top prediction" if c == "top" else class_name(c))
    masked = controls.toggle("Only inside the lesion mask", key="cam_masked",
                             help="Show the map inside the segmentation mask only (the map itself is computed on "
                                  "the whole image).")
    code = target if target in CLASS_CODES else r.label
    caption = cam_caption(method, code, masked)
    try:
        with view, st.spinner(f"Computing {method}…"):
            cam = remember("cam_cache", (key, code, method), lambda: _cam(rgb, code, method))
    except Exception as exc:
        view.error(f"{method} failed: {exc}")
        return None, caption
    image = cam_overlay(rgb, cam, mask if masked else None)
    view.image(image, width="stretch", caption=f"{caption} (red = most influential)")
    return image, caption


def report_ui(rgb, r, name: str, key: tuple, mask, mask_kind: str, measurements: dict, cam_image,
              cam_label: str) -> None:
    """Mask download, and the PDF built only when asked for (then offered for download until its content changes)."""
    st.markdown("**Downloads**")
    note = st.text_input("Note for the PDF report (optional)", key="report_note", max_chars=500,
                         placeholder="e.g. clinical context; no patient identifiers")
    stem = name.rsplit(".", 1)[0] or "image"
    row = st.container(horizontal=True)
    row.download_button("Mask (PNG)", png_bytes(mask), file_name=f"{stem}_{mask_kind}_mask.png", mime="image/png",
                        key="dl_mask", icon=":material/image:")
    pdf_slot = row.empty()
    content = (key, mask_kind, cam_label if cam_image is not None else None, note)  # what the PDF shows
    prepared = st.session_state.get("pdf")
    if prepared is None or prepared[0] != content:
        if not pdf_slot.button("Prepare PDF report", key="pdf_prepare", icon=":material/picture_as_pdf:"):
            return
        try:
            with st.spinner("Building the PDF…"):
                prepared = (content, build_report(rgb, r, mask, measurements, cam_image, cam_label, note))
        except Exception as exc:
            pdf_slot.error(f"PDF report unavailable: {exc}")
            return
        st.session_state["pdf"] = prepared
    pdf_slot.download_button("PDF report", prepared[1], file_name=f"{stem}_lesionlens.pdf", mime="application/pdf",
                             key="dl_pdf", type="primary", icon=":material/picture_as_pdf:")


def result_ui(rgb, r, name: str, example: dict | None, mm_per_pixel: float | None, key: tuple) -> None:
    """The analysis of one image; `key` = (image digest, mm per pixel) identifies it."""
    header_ui(r, name, example)
    controls = st.columns(3, gap="medium")
    views = st.columns(3, gap="medium")
    controls[0].markdown("**Original**")
    controls[0].caption(f"`{name}` · {rgb.shape[1]} × {rgb.shape[0]} px. Analysed in memory; nothing is stored.")
    views[0].image(rgb, width="stretch", caption="Original image")
    mask_kind, mask = segmentation_ui(rgb, r, controls[1], views[1])
    cam_image, cam_label = cam_ui(rgb, r, mask, key[0], controls[2], views[2])
    measurements = r.measurements
    if mask_kind == "coarse":
        from core.lesion_measurements import measure_lesion

        measurements = measure_lesion(mask, rgb, mm_per_pixel)
    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Class probabilities** (top 3 in colour; ▲ = malignant class)")
        st.plotly_chart(probability_figure(r.probs), key="probs_chart", config={"displayModeBar": False})
    with right:
        st.markdown(f"**Measurements** ({MASK_CHOICES[mask_kind]} mask)")
        st.table(measurement_table(measurements), hide_index=True, hide_header=True, border="horizontal")
        if mm_per_pixel is None:
            st.caption("Enter the field of view in the sidebar (Measurement scale) for sizes in mm.")
        st.caption(f"Model {pool().version} on {pool().device.upper()} · analysis {r.timings.get('total', 0):.2f} s")
    report_ui(rgb, r, name, key, mask, mask_kind, measurements, cam_image, cam_label)


def _analyse(rgb, mm_per_pixel):
    with pool().borrow() as analyzer:
        return analyzer.analyze(rgb, mm_per_pixel=mm_per_pixel)


def analyze_page() -> None:
    st.title("Analyze an image")
    st.caption(DISCLAIMER)
    fov = scale_ui()
    data, name, example = input_ui(current_data_dir())
    if data is None:
        return
    try:
        rgb = load_image(data, name)
    except ImageRejected as exc:
        st.error(f"Cannot analyse **{name}**: {exc}")
        return
    mm_per_pixel = None
    if fov:
        from core.lesion_measurements import mm_per_pixel_from_fov

        mm_per_pixel = mm_per_pixel_from_fov(fov, rgb.shape[1])
    key = (digest(data), mm_per_pixel)
    result = cached("result_cache", key)
    if result is not None:
        area = st.container()
    else:
        area = st.empty()  # a new image: replaces the previous result at once (not greyed out until this run ends)
        try:
            with area, st.spinner("Analysing…"):
                result = remember("result_cache", key, lambda: _analyse(rgb, mm_per_pixel))
        except ModelUnavailable as exc:
            area.error(str(exc))
            return
        except Exception as exc:
            area.error(f"Analysis failed: {exc}")
            return
        area = area.container()
    with area:
        result_ui(rgb, result, name, example, mm_per_pixel, key)


analyze_page()
