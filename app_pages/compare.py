"""Compare a baseline and a follow-up image of one lesion: both analysed, the follow-up registered onto the baseline,
the two contours overlaid, every measurement and class probability compared with the measurement-noise band, PDF.
Nothing is stored: uploads are analysed in memory and the comparison lives in this session only."""
from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import streamlit as st

from core.io.intake import FILE_EXTENSIONS
from ui.analyzers import ModelUnavailable, pool
from ui.data_folder import current_data_dir
from ui.followup import noise_band, repeated_lesions
from ui.formatting import DISCLAIMER, class_label
from ui.images import digest
from ui.model_files import model_card
from ui.referral import session_threshold, verdict_of
from core.data.classes import CLASS_CODES
from core.analysis.followup import (BASELINE_COLOUR, BEYOND, FOLLOWUP_COLOUR, TABLE_COLUMNS,
                                    UNINFORMATIVE_PROBABILITY_BAND, SameImage, compare_images, contours, table_text)

ROLES = ("Baseline", "Follow-up")


# ---------------------------------------------------------------- input
def dataset_pair_ui(data_dir: Path) -> dict | None:
    """A random HAM10000 lesion with two or more images (held-out test lesions first) of a chosen class."""
    if not (data_dir / "ham10000").is_dir():
        st.info(f"`{data_dir}` holds no ham10000/ folder (only HAM10000 has several images of one lesion).")
        return None
    try:
        table = repeated_lesions(str(data_dir))
    except Exception as exc:
        st.error(f"Cannot read the dataset: {exc}")
        return None
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    codes = [c for c in CLASS_CODES if (table["dx"] == c).any()]
    code = left.selectbox("Class", codes, format_func=class_label, key="pair_class")
    if right.button("Random same-lesion pair", key="pair_pick", type="primary", icon=":material/casino:"):
        pool = table[table["dx"] == code]
        held_out = pool[pool["split"] == "test"]
        pool = held_out if len(held_out) else pool
        lesion = random.choice(sorted(set(pool["lesion_id"])))
        rows = pool[pool["lesion_id"] == lesion].sample(2, random_state=random.randrange(2**31))
        st.session_state["compare_pair"] = {
            "lesion_id": lesion, "dx": code, "split": rows["split"].iloc[0],
            "images": [(row["image_path"], row["image_id"]) for _, row in rows.iterrows()],
        }
    pair = st.session_state.get("compare_pair")
    if pair is None:
        st.caption("Choose a class and press **Random same-lesion pair** (lesions of the held-out test split first).")
        return None
    st.caption(f"Lesion `{pair['lesion_id']}` ({class_label(pair['dx'])}, {pair['split']} split): "
               f"{' and '.join(f'`{i}`' for _, i in pair['images'])}. HAM10000 does not record which photograph was "
               "taken first, so the order is random.")
    return pair


def input_ui(data_dir: Path | None) -> list[tuple[bytes, str]] | None:
    """[(baseline bytes, name), (follow-up bytes, name)] or None until both are given."""
    modes = ["Upload two images"] + (["Dataset pair (same lesion)"] if data_dir else [])
    mode = st.radio("Image source", modes, horizontal=True, key="compare_mode", label_visibility="collapsed")
    if mode == "Upload two images":
        columns = st.columns(2)
        uploads = [column.file_uploader(f"{role} image", type=list(FILE_EXTENSIONS), key=f"compare_upload_{index}",
                                        help="Analysed in memory and never stored.")
                   for index, (column, role) in enumerate(zip(columns, ROLES))]
        if any(upload is None for upload in uploads):
            st.caption("Upload a baseline and a follow-up dermoscopic image of the same lesion."
                       + ("" if data_dir else " Set a data folder in the sidebar to try real HAM10000 pairs."))
            return None
        return [(upload.getvalue(), upload.name) for upload in uploads]
    pair = dataset_pair_ui(data_dir)
    if pair is None:
        return None
    try:
        return [(Path(path).read_bytes(), image_id) for path, image_id in pair["images"]]
    except OSError as exc:
        st.error(f"Cannot read the dataset image: {exc}")
        return None


def fov_ui() -> float | None:
    with st.sidebar.expander("Measurement scale", expanded=False):
        fov = st.number_input("Baseline field of view (image width) in mm", min_value=0.0, max_value=500.0,
                              value=0.0, step=1.0, key="compare_fov_mm",
                              help="Width of the skin area the whole baseline image shows. 0 = unknown (pixels "
                                   "only). The follow-up is measured in baseline pixels after registration. A DICOM "
                                   "baseline with PixelSpacing gives millimetres without it.")
    return fov if fov > 0 else None


# ---------------------------------------------------------------- results
def comparison_for(key: tuple, images, band, spacing: tuple[float | None, float | None]):
    """The comparison of the current pair, kept in this session only (the latest one)."""
    cached = st.session_state.get("compare_result")
    if cached is None or cached[0] != key:
        with st.spinner("Analysing both images and registering them…"), pool().borrow() as analyzer:
            cached = (key, compare_images(analyzer, *(rgb for rgb, _ in images), band=band, verdict=verdict_of,
                                          mm_per_pixel=spacing))
        st.session_state["compare_result"] = cached
    return cached[1]


def status_ui(comparison, band, band_text: str) -> None:
    registration = comparison.registration
    if registration.registered:
        st.success(registration.describe(), icon=":material/join_inner:")
    else:
        st.warning(f"**These may not be the same lesion.** {registration.describe()} Two photographs of one lesion "
                   "almost always register, so no change is reported.", icon=":material/warning:")
    if comparison.size_note:
        st.warning(f"**Sizes are not compared:** {comparison.size_note}.", icon=":material/straighten:")
    elif comparison.size_scale == "pixel spacing":
        st.caption("Sizes are compared in millimetres: both images carry their pixel size (DICOM PixelSpacing).")
    if band is None:
        st.warning(f"**No-change band unavailable:** {band_text} The changes are shown without a noise assessment.",
                   icon=":material/warning:")
    else:
        st.caption(f"No-change band: {band_text} A change larger than the band is beyond the measurement noise.")
    for role, result in zip(ROLES, (comparison.baseline, comparison.followup)):
        if result.ood_level != "in":
            st.warning(f"**{role} image:** {result.ood_reason}", icon=":material/warning:")


def panels(comparison, images) -> list[tuple[str, object]]:
    """(caption, image) of the baseline, the follow-up and the overlay on the baseline."""
    (base, _), (follow, _) = images
    how = "registered" if comparison.registration.registered else "centred: shapes only"
    return [("Baseline (green contour)", contours(base, comparison.baseline.mask, BASELINE_COLOUR)),
            ("Follow-up (blue contour)", contours(follow, comparison.followup.mask, FOLLOWUP_COLOUR)),
            (f"Both contours ({how})",
             contours(base, comparison.baseline.mask, BASELINE_COLOUR, comparison.followup_mask_on_baseline))]


def images_ui(comparison, images) -> None:
    for column, (caption, image) in zip(st.columns(3), panels(comparison, images)):
        column.image(image, width="stretch", caption=caption)
    for column, role, (rgb, name), result in zip(st.columns(3), ROLES, images,
                                                 (comparison.baseline, comparison.followup)):
        diagnosis = (f" · most likely **{class_label(result.label)}** {result.probs[result.label]:.0%}"
                     if result.diagnosis_shown else " · no diagnosis (not a dermoscopy image)")
        column.markdown(f"**{role}** `{name}` · {rgb.shape[1]} × {rgb.shape[0]} px{diagnosis}")
        if result.diagnosis_shown:
            verdict = verdict_of(result)
            alert = {"refer": column.error, "review": column.warning}.get(verdict.level, column.info)
            alert(f"**{role}: {verdict.headline}.** {verdict.because}")


def table_ui(comparison, band, mm_per_pixel: float | None) -> None:
    if band is not None or comparison.lesion_doubt:
        st.markdown(f"**{comparison.verdict(mm_per_pixel)}**")
    table = pd.DataFrame(table_text(comparison.changes, mm_per_pixel), columns=list(TABLE_COLUMNS))
    flagged = [c.status == BEYOND for c in comparison.changes]
    styled = table.style.apply(lambda row: ["background-color: #FFE0B2; font-weight: 600" if flagged[row.name]
                                            else "" for _ in row], axis=1)
    st.table(styled, hide_index=True, border="horizontal")
    how = ("with the registration scale" if comparison.registration.registered
           else "assuming both images show the same field of view")
    st.caption(f"Follow-up minus baseline. Sizes are in baseline pixels (the follow-up converted {how}) and as a "
               "percentage of the baseline; pp = percentage points. A probability whose no-change band is wider than "
               f"±{100 * UNINFORMATIVE_PROBABILITY_BAND:.0f} pp cannot show a change (two photographs of one lesion "
               "differ by that much one time in twenty): its row says so."
               + ("" if mm_per_pixel else " Enter the baseline field of view in the sidebar for millimetres."))


def report_ui(comparison, images, band, band_text: str, mm_per_pixel: float | None) -> None:
    from core.reports.comparison_report import build_comparison_pdf

    note = st.text_input("Note for the PDF report (optional)", key="compare_note", max_chars=500,
                         placeholder="e.g. interval between the images; no patient identifiers")
    card = model_card()

    def build() -> bytes:  # run when the button is pressed
        return build_comparison_pdf(
            panels=panels(comparison, images), comparison=comparison, band_available=band is not None,
            band_text=band_text, mm_per_pixel=mm_per_pixel, clinician_note=note,
            model_info={"version": card.version, "created": card.display("created")})

    st.download_button("Download comparison report (PDF)", build, file_name="lesionlens_comparison.pdf",
                       mime="application/pdf", key="compare_pdf", type="primary", icon=":material/picture_as_pdf:")


def compare_page() -> None:
    st.title("Compare baseline and follow-up")
    st.caption(DISCLAIMER)
    fov = fov_ui()
    given = input_ui(current_data_dir())
    if given is None:
        return
    from core.io.intake import ImageRejected, load_visit

    if given[0][0] == given[1][0]:
        st.error("The baseline and the follow-up are the same file: a follow-up needs a second photograph of the "
                 "lesion, taken at a later visit.", icon=":material/content_copy:")
        return
    images, spacing = [], []
    for role, (data, name) in zip(ROLES, given):
        try:
            loaded = load_visit(data, name)
        except ImageRejected as exc:
            st.error(f"Cannot analyse the {role.lower()} image **{name}**: {exc}")
            continue
        images.append((loaded.frames[0], name))
        spacing.append(loaded.mm_per_pixel)
    if len(images) < 2:
        return
    band, band_text = noise_band()
    try:
        pool().wait()
        key = (*(digest(data) for data, _ in given), pool().version, band_text, session_threshold(), *spacing)
        comparison = comparison_for(key, images, band, tuple(spacing))
    except (ModelUnavailable, SameImage) as exc:
        st.error(str(exc))
        return
    except Exception as exc:
        st.error(f"Comparison failed: {exc}")
        return
    mm_per_pixel = spacing[0]
    if fov and not mm_per_pixel:
        from core.lesion.lesion_measurements import mm_per_pixel_from_fov

        mm_per_pixel = mm_per_pixel_from_fov(fov, images[0][0].shape[1])
    status_ui(comparison, band, band_text)
    images_ui(comparison, images)
    table_ui(comparison, band, mm_per_pixel)
    report_ui(comparison, images, band, band_text, mm_per_pixel)


compare_page()
