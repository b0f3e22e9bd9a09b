"""Analyze one dermoscopic image: OOD check, segmentation, class probabilities, melanoma referral, uncertainty in
words, CAM, measurements, similar cases, patient context, PDF."""
from __future__ import annotations

import random
from pathlib import Path

import streamlit as st

from core.data.classes import CLASS_CODES, MALIGNANT_CODES
from core.decisions.ood_levels import GREYED_HEADLINES, GREYED_LEVELS
from core.decisions.triage import HEADLINES
from core.decisions.view_spread import range_sentence
from core.io.dicom_input import read_dicom
from core.io.image_limits import is_dicom
from core.io.intake import FILE_EXTENSIONS, SUPPORTED_TEXT, ImageRejected, load_image
from core.data.patient_context import SEXES, SITES, ContextError, PatientContext
from ui.analyzers import MODEL_LOADING_TEXT, ModelUnavailable, pool
from ui.audit_log import record_analysis, record_report_download
from ui.data_folder import SOURCE_LABELS, available_sources, current_data_dir
from ui.datasets import manifest, read_image_path, test_split
from ui.figures import probability_figure
from ui.formatting import (DISCLAIMER, GREYED_CSS, cam_caption, cam_scale_note, class_label, class_name,
                           context_use_text, measurement_table, prediction_set_text)
from ui.images import cam_overlay, digest, mask_overlay, png_bytes
from ui.model_files import model_card
from ui.referral import referral_of, refused_ui, verdict_of
from ui.report import build_report
from ui.session_cache import cached, remember

MASK_CHOICES = {"enhanced": "enhanced-SN", "coarse": "coarse-SN"}
SIMILAR_PER_ROW = 4
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


def context_ui() -> PatientContext | None:
    """Optional age, sex and anatomical site, checked by core.data.patient_context; None (with the error shown) when a
    value is invalid. The analysis goes on either way; the values go into the PDF report and into the analysis
    (where the model card's context head is in use)."""
    with st.expander("Patient context (optional)", icon=":material/person:"):
        c1, c2, c3 = st.columns(3)
        age = c1.text_input("Age (years)", key="context_age", placeholder="e.g. 54")
        sex = c2.selectbox("Sex", ["", *SEXES], key="context_sex", format_func=lambda v: v or "not given")
        site = c3.selectbox("Anatomical site", ["", *SITES], key="context_site",
                            format_func=lambda v: v or "not given")
        st.caption(context_use_text(model_card()))
        try:
            return PatientContext.parse(age, sex, site)
        except ContextError as exc:
            st.error(f"Patient context: {exc}. Correct it or leave it empty; it is left out of the report until then.",
                     icon=":material/error:")
            return None


VERDICT_ALERTS = {"refer": ("error", ":material/priority_high:"), "review": ("warning", ":material/help:"),
                  "no_referral": ("info", ":material/info:")}


def verdict_ui(parent, r) -> None:
    """The one triage statement at the top of the result (core.decisions.triage: referral rules, clear nevus, uncertainty, unusual flag,
    the more severe first) with what it did at clinics the model was not trained on, and the melanoma score against
    the threshold applied (the session's or the card's)."""
    verdict, referral = verdict_of(r), referral_of(r)
    kind, icon = VERDICT_ALERTS[verdict.level]
    body = verdict.because + (f"  \n{verdict.evidence}" if verdict.evidence else "")
    if r.level_without_context not in (None, verdict.level) and not referral.session:
        body += (f"  \nWithout the patient context entered above the verdict would be "
                 f"“{HEADLINES[r.level_without_context]}”: the context decides this call.")
    getattr(parent, kind)(f"**{verdict.headline}.** {body}  \n{referral.numbers} ({referral.threshold_note}).",
                          icon=icon)


def spread_note(r) -> str:
    """Why a confident top class can still be uncertain: its test-time views disagree."""
    top_code, top_p = r.top3[0]
    if r.uncertainty_level == "low" or r.view_probs is None or top_p < 0.9:
        return ""
    return (f" {r.uncertainty_level.capitalize()} although the top class has {top_p:.1%}: "
            f"{range_sentence(r.view_probs, top_code)}.")


def header_ui(r, name: str, example: dict | None) -> None:
    """No diagnosis for an image that is not dermoscopy (its own verdict: refused_ui); otherwise the triage verdict first, then
    its details: the top class, its probability, the uncertainty in words, the prediction set and the true label of
    a dataset example, greyed with the unusual-image warning when the image is unusual."""
    box = st.container(border=True)
    box.markdown(f"**Result for `{name}`**")
    if not r.diagnosis_shown:
        refused_ui(box, r)
        return
    verdict_ui(box, r)
    if r.ood_level in GREYED_LEVELS:
        box.warning(f"**{GREYED_HEADLINES[r.ood_level]}.** {r.ood_reason}", icon=":material/warning:")
    quality_ui(box, r)
    top_code, top_p = r.top3[0]
    with diagnosis_container(box, r, "diagnosis"):
        c1, c2, c3 = st.columns([4, 2, 2])
        c1.markdown(f"### {class_label(top_code)}")
        if top_code in MALIGNANT_CODES:
            c1.markdown(":red-badge[▲ malignant class]")
        c2.metric("Probability", f"{top_p:.1%}")
        c3.metric("Uncertainty", r.uncertainty_level, help="From the disagreement of the test-time views or the "
                  "probabilities (the model card's uncertainty score), cut into three levels that hold in every "
                  "source they were fitted on; the error rate quoted is measured on sources they were fitted without.")
        st.caption(r.uncertainty_text + spread_note(r))
        if r.prediction_set:
            st.caption(prediction_set_text(r.prediction_set, model_card()))
        if r.context_used:
            st.caption("The probabilities include the patient context entered above (age, sex, site).")
        if example is not None:
            agrees = ":green[prediction agrees]" if example["dx"] == top_code else ":red[prediction differs]"
            seen = {"test": "held-out test image", "val": "validation image, not trained on",
                    "train": "training image: the model has seen it"}.get(example.get("split", "test"), "dataset image")
            st.markdown(f"True label ({SOURCE_LABELS.get(example['source'], example['source'])}, {seen}): "
                        f"**{class_label(example['dx'])}** — {agrees}")


def quality_ui(parent, r) -> None:
    """Which image-quality check fired (core.decisions.image_quality), in one sentence; the diagnosis below is greyed."""
    if r.quality:
        parent.warning(f"**Image quality.** {r.quality_text}", icon=":material/photo_camera:")


def diagnosis_container(parent, r, key: str):
    """A container for diagnosis content: greyed out (GREYED_CSS) when the image is unusual or an image-quality
    check fired."""
    if not r.greyed:
        return parent.container(key=key)
    parent.html(GREYED_CSS)
    return parent.container(key=f"unusual_{key}")


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


def _cam(rgb, code: str, method: str, progress=None):
    with pool().borrow() as analyzer:
        return analyzer.cam_for(rgb, code, method, progress)


def cam_ui(rgb, r, mask, key: tuple, controls, view):
    """CAM controls in `controls`, the labelled map in `view` (`key`: the file's digest and frame); returns (overlay
    image or None, its caption)."""
    from core.analysis.cam import distinct_class_cams

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
            bar = view.progress(0.0, text=f"{method}: one forward pass per batch of feature channels…") \
                if method == "Score-CAM" else None
            cam = remember("cam_cache", (key, code, method), lambda: _cam(
                rgb, code, method, None if bar is None else lambda share: bar.progress(share, text=(
                    f"{method}: {share:.0%} of the feature channels"))))
            if bar is not None:
                bar.empty()
    except Exception as exc:
        view.error(f"{method} failed: {exc}")
        return None, caption
    image = cam_overlay(rgb, cam, mask if masked else None)
    view.image(image, width="stretch", caption=f"{caption} (red = most influential)")
    note = cam_scale_note(code, r.probs[code])
    if note:
        view.caption(note)
    return image, caption


def similar_cases_ui(r) -> None:
    """The nearest reference cases, nearest first: thumbnails when the data folder holds them, else a table."""
    st.markdown("**Similar cases** — confirmed reference images nearest to this one in the classifier's feature "
                "space (nearest first). They are found by the same features that make the diagnosis, so they tend to "
                "share it: they illustrate the prediction, they do not confirm it.")
    if r.similar is None or r.similar.empty:
        st.caption("The shipped model has no similar-case index.")
        return
    paths = reference_paths(current_data_dir())
    if not paths:
        table = r.similar.assign(dx=r.similar["dx"].map(class_label),
                                 source=r.similar["source"].map(lambda s: SOURCE_LABELS.get(s, s)))
        st.dataframe(table[["image_id", "source", "dx", "confirmed_by", "similarity"]], hide_index=True,
                     key="similar_table", column_config={
                         "image_id": "Image", "source": "Dataset", "dx": "Diagnosis", "confirmed_by": "Confirmed by",
                         "similarity": st.column_config.NumberColumn("Similarity", format="%.2f")})
        st.caption("Set the data folder in the sidebar to see these images.")
        return
    columns = st.columns(SIMILAR_PER_ROW) * ((len(r.similar) + SIMILAR_PER_ROW - 1) // SIMILAR_PER_ROW)
    for rank, (column, row) in enumerate(zip(columns, r.similar.itertuples(index=False)), start=1):
        caption = f"{rank}. {class_name(row.dx)} · {row.confirmed_by} · similarity {row.similarity:.2f} · {row.image_id}"
        path = paths.get((row.source, row.image_id))
        if path is None:
            column.caption(f"{caption} (not in the data folder)")
        else:
            column.image(read_image_path(path), width="stretch", caption=caption)


def reference_paths(data_dir: Path | None) -> dict[tuple[str, str], str]:
    """(source, image_id) -> image file of the data folder's datasets ({} without one)."""
    sources = tuple(available_sources(data_dir)) if data_dir else ()
    if not sources:
        return {}
    try:
        table = manifest(str(data_dir), sources)
    except Exception as exc:
        st.warning(f"Cannot read the dataset for the similar cases' images: {exc}")
        return {}
    return dict(zip(zip(table["source"], table["image_id"]), table["image_path"]))


def report_ui(rgb, r, name: str, key: tuple, mask, mask_kind: str, measurements: dict, cam_image,
              cam_label: str, context: PatientContext | None, data: bytes, exam_date) -> None:
    """Mask download, and the PDF built only when asked for (then offered for download until its content changes).
    The PDF is filed by the image file's hash, `exam_date` (a DICOM study date, else the day of the analysis) and the
    lesion label entered here: the file name stays out of it (it may name the patient)."""
    st.markdown("**Downloads**")
    left, right = st.columns([1, 2])
    lesion_label = left.text_input("Lesion label for the PDF (optional)", key="report_lesion_label", max_chars=60,
                                   placeholder="e.g. L2 left shoulder",
                                   help="Which of the patient's lesions this is, to file the report by; no patient "
                                        "identifiers.")
    note = right.text_input("Note for the PDF report (optional)", key="report_note", max_chars=500,
                            placeholder="e.g. clinical context; no patient identifiers")
    stem = name.rsplit(".", 1)[0] or "image"
    row = st.container(horizontal=True)
    if mask is not None:
        row.download_button("Mask (PNG)", png_bytes(mask), file_name=f"{stem}_{mask_kind}_mask.png",
                            mime="image/png", key="dl_mask", icon=":material/image:")
    pdf_slot = row.empty()
    # what the PDF shows
    content = (key, mask_kind, cam_label if cam_image is not None else None, note, lesion_label, context,
               referral_of(r).threshold)
    prepared = st.session_state.get("pdf")
    if prepared is None or prepared[0] != content:
        if not pdf_slot.button("Prepare PDF report", key="pdf_prepare", icon=":material/picture_as_pdf:"):
            return
        try:
            with st.spinner("Building the PDF…"):
                prepared = (content, build_report(rgb, r, mask, measurements, cam_image, cam_label, note, context,
                                                  image_data=data, exam_date=exam_date, lesion_label=lesion_label))
        except Exception as exc:
            pdf_slot.error(f"PDF report unavailable: {exc}")
            return
        st.session_state["pdf"] = prepared
    pdf_slot.download_button("PDF report", prepared[1], file_name=f"{stem}_lesionlens.pdf", mime="application/pdf",
                             key="dl_pdf", type="primary", icon=":material/picture_as_pdf:",
                             on_click=record_report_download, args=(key[0], r))


def result_ui(rgb, r, name: str, example: dict | None, mm_per_pixel: float | None, key: tuple,
              context: PatientContext | None, data: bytes, exam_date) -> None:
    """The analysis of one image (`data`: the file's bytes, `exam_date`: its DICOM study date or None); `key` =
    (image digest, mm per pixel) identifies it."""
    header_ui(r, name, example)
    if not r.diagnosis_shown:  # not dermoscopy: the image and the reason only
        st.image(rgb, width=360, caption=f"`{name}` · {rgb.shape[1]} × {rgb.shape[0]} px. Analysed in memory; "
                                         "nothing is stored.")
        report_ui(rgb, r, name, key, None, "", {}, None, "", context, data, exam_date)
        return
    controls = st.columns(3, gap="medium")
    views = st.columns(3, gap="medium")
    controls[0].markdown("**Original**")
    controls[0].caption(f"`{name}` · {rgb.shape[1]} × {rgb.shape[0]} px. Analysed in memory; nothing is stored.")
    views[0].image(rgb, width="stretch", caption="Original image")
    mask_kind, mask = segmentation_ui(rgb, r, controls[1], views[1])
    cam_image, cam_label = cam_ui(rgb, r, mask, key[:2], controls[2], views[2])  # (file, frame)
    measurements = r.measurements
    if mask_kind == "coarse":
        from core.lesion.lesion_measurements import measure_lesion

        measurements = measure_lesion(mask, rgb, mm_per_pixel)
    left, right = st.columns([3, 2])
    with left, diagnosis_container(st, r, "probabilities"):
        st.markdown("**Class probabilities** (top 3 in colour; ▲ = malignant class)")
        st.plotly_chart(probability_figure(r.probs), key="probs_chart", config={"displayModeBar": False})
    with right:
        st.markdown(f"**Measurements** ({MASK_CHOICES[mask_kind]} mask)")
        st.table(measurement_table(measurements), hide_index=True, hide_header=True, border="horizontal")
        if mm_per_pixel is None:
            st.caption("Enter the field of view in the sidebar (Measurement scale) for sizes in mm.")
        st.caption(f"Model {pool().version} on {pool().device.upper()} · analysis {r.timings.get('total', 0):.2f} s")
    similar_cases_ui(r)
    report_ui(rgb, r, name, key, mask, mask_kind, measurements, cam_image, cam_label, context, data, exam_date)


def dicom_ui(data: bytes, name: str):
    """A DICOM upload: (the RGB frame to analyse, its index, the DicomImage with the tags' patient context); a
    multi-frame object gets a frame selector. Raises DicomRejected (an ImageRejected) with the reason in words."""
    image = read_dicom(data, name)
    frame = 0
    if len(image.frames) > 1:
        frame = st.selectbox(f"{name} holds {len(image.frames)} images: which one to analyse",
                             range(len(image.frames)), format_func=lambda i: f"frame {i + 1}", key="dicom_frame")
    return image.frames[frame], frame, image


def model_loading_ui() -> None:
    """The first analysis after a start waits for the model: say so while it loads (raises ModelUnavailable when it
    cannot be loaded)."""
    if not pool().wait(timeout=0):
        with st.spinner(MODEL_LOADING_TEXT):
            pool().wait()


def _analyse(rgb, mm_per_pixel, context):
    with pool().borrow() as analyzer:
        return analyzer.analyze(rgb, mm_per_pixel=mm_per_pixel, context=context)


def analyze_page() -> None:
    st.title("Analyze an image")
    st.caption(DISCLAIMER)
    fov = scale_ui()
    data, name, example = input_ui(current_data_dir())
    context = context_ui()
    if data is None:
        return
    try:
        rgb, frame, tags = dicom_ui(data, name) if is_dicom(data) else (load_image(data, name), 0, None)
    except ImageRejected as exc:
        st.error(f"Cannot analyse **{name}**: {exc}")
        return
    if tags is not None and context is not None and not context.given and tags.context.given:
        context = tags.context
        st.caption("Patient context from the DICOM tags: " + "; ".join(f"{k.lower()} {v}" for k, v in context.rows())
                   + ". " + " ".join(tags.notes) + " Enter it above to change it.")
    mm_per_pixel = None
    if fov:
        from core.lesion.lesion_measurements import mm_per_pixel_from_fov

        mm_per_pixel = mm_per_pixel_from_fov(fov, rgb.shape[1])
    key = (digest(data), frame, mm_per_pixel, context)
    result = cached("result_cache", key)
    if result is not None:
        area = st.container()
    else:
        area = st.empty()  # a new image: replaces the previous result at once (not greyed out until this run ends)
        try:
            with area:
                model_loading_ui()
                with st.spinner("Analysing…"):
                    result = remember("result_cache", key, lambda: _analyse(rgb, mm_per_pixel, context))
        except ModelUnavailable as exc:
            area.error(str(exc))
            return
        except Exception as exc:
            area.error(f"Analysis failed: {exc}")
            return
        record_analysis(data, result)
        area = area.container()
    with area:
        result_ui(rgb, result, name, example, mm_per_pixel, key, context, data, tags.taken if tags else None)


analyze_page()
