"""PACS: search the image archive (DICOMweb QIDO-RS), retrieve a study's dermoscopy images (WADO-RS), analyse them
with the patient context of their tags, and store the PDF report, the lesion mask and the findings back into the
study (STOW-RS). The server comes from .streamlit/secrets.toml [pacs] or LESIONLENS_PACS_URL (core.io.pacs)."""
from __future__ import annotations

import re

import streamlit as st

from core.data.classes import MALIGNANT_CODES
from core.decisions.ood_levels import GREYED_HEADLINES, GREYED_LEVELS
from core.io.dicom_results import DicomResultError
from core.io.pacs import Pacs, PacsError, Study
from ui.analyzers import ModelUnavailable
from ui.audit_log import record_pacs_store, record_result
from ui.formatting import DISCLAIMER, class_label
from ui.images import mask_overlay
from ui.pacs_results import analyse, retrieve, store_results
from ui.referral import referral_of, refused_ui, verdict_of
from ui.session_cache import remember

MODALITIES = {"DMS": "DMS (dermoscopy)", "XC": "XC (external camera photography)", "": "any modality"}
DATE_PATTERN = re.compile(r"^(\d{8})?(-(\d{8})?)?$")
MAX_IMAGES = 24
PER_ROW = 4


def search_ui(pacs: Pacs) -> None:
    """The search form; the studies found go to the session state."""
    with st.form("pacs_search", border=True):
        c1, c2, c3 = st.columns(3)
        patient = c1.text_input("Patient ID", key="pacs_patient", placeholder="e.g. DEMO-001")
        date = c2.text_input("Study date", key="pacs_date", placeholder="YYYYMMDD or YYYYMMDD-YYYYMMDD")
        modality = c3.selectbox("Modality", list(MODALITIES), format_func=MODALITIES.get, key="pacs_modality")
        submitted = st.form_submit_button("Search studies", type="primary", icon=":material/search:")
    if not submitted:
        return
    date = date.replace(" ", "")
    if not DATE_PATTERN.match(date):
        st.error(f"Study date {date!r} is not a date: write YYYYMMDD, or a range YYYYMMDD-YYYYMMDD.")
        return
    try:
        st.session_state["pacs_studies"] = pacs.search_studies(patient.strip(), date, modality)
    except PacsError as exc:
        st.error(str(exc), icon=":material/cloud_off:")
        st.session_state.pop("pacs_studies", None)


def date_text(date: str) -> str:
    return f"{date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 else "no date"


def time_text(time: str) -> str:
    """DICOM HHMMSS (fractions and a missing part allowed) as HH:MM; "" when absent."""
    digits = time.split(".")[0]
    return f"{digits[:2]}:{digits[2:4]}" if len(digits) >= 4 else ""


def study_label(study: Study, identifiers: bool) -> str:
    """One study in the chooser: when and what, and its short ID, so studies of one day stay apart without the
    patient's identifiers."""
    when = " ".join(part for part in (date_text(study.date), time_text(study.time)) if part)
    who = f"{study.patient_id} · " if identifiers else ""
    what = study.description or "/".join(study.modalities) or "study"
    return f"{who}{when} · {what} · {study.instances} instance(s) · study {study.short_id}"


def study_ui(studies: list[Study], identifiers: bool) -> Study | None:
    """The studies found (newest first: core.io.pacs sorts them) and the one chosen."""
    if not studies:
        st.info("No study matches this search.")
        return None
    rows = [{**({"Patient ID": s.patient_id} if identifiers else {}), "Date": date_text(s.date),
             "Time": time_text(s.time), "Modalities": ", ".join(s.modalities), "Description": s.description,
             "Instances": s.instances, "Study": s.short_id}
            for s in studies]
    st.dataframe(rows, hide_index=True, key="pacs_study_table")
    st.caption("Newest first. Study: a short hash of the study's UID, to tell studies apart without identifiers.")
    by_uid = {s.study_uid: s for s in studies}
    uid = st.selectbox("Study", list(by_uid), format_func=lambda u: study_label(by_uid[u], identifiers),
                       key="pacs_study")
    return by_uid.get(uid)


def images_ui(pacs: Pacs, study: Study, identifiers: bool) -> list:
    """The study's dermoscopy images as thumbnails with a tick box each; returns the ticked PacsImages."""
    try:
        instances = pacs.dermoscopy_instances(study.study_uid)
        with st.spinner(f"Retrieving {min(len(instances), MAX_IMAGES)} image(s)…"):
            images = remember("pacs_images", (study.study_uid, identifiers),
                              lambda: [retrieve(pacs, i, identifiers) for i in instances[:MAX_IMAGES]], 2)
    except PacsError as exc:
        st.error(str(exc), icon=":material/image_not_supported:")
        return []
    if len(instances) > MAX_IMAGES:
        st.caption(f"The first {MAX_IMAGES} of {len(instances)} dermoscopy images are shown.")
    chosen = []
    columns = st.columns(PER_ROW)
    for index, image in enumerate(images):
        column = columns[index % PER_ROW]
        name = f"Image {image.instance.number or index + 1}"
        if image.image is None:
            column.error(f"{name}: {image.problem}")
            continue
        context = image.image.context.rows() if image.image.context.given else []
        about = ", ".join(f"{k.lower()} {v}" for k, v in context) or "no age, sex or site in the tags"
        if identifiers and image.image.identifiers.get("PatientName"):
            about = f"{image.image.identifiers['PatientName']} · {about}"
        column.image(image.rgb, width="stretch", caption=f"{name} · {image.rgb.shape[1]}×{image.rgb.shape[0]} px · "
                                                         f"{about}")
        for note in image.image.notes:
            column.caption(note)
        if column.checkbox("Analyse", value=True, key=f"pacs_pick_{image.instance.sop_uid}"):
            chosen.append(image)
    return chosen


def analyse_ui(study: Study, chosen: list) -> None:
    """The analyse button: the analyses (and their DICOM results) go to the session state for this study."""
    note = st.text_input("Note for the PDF reports (optional)", key="pacs_note", max_chars=500,
                         placeholder="e.g. clinical context; no patient identifiers")
    if not st.button(f"Analyse {len(chosen)} image(s)", key="pacs_analyse", type="primary",
                     icon=":material/biotech:", disabled=not chosen):
        return
    analysed, problems = [], []
    with st.spinner(f"Analysing {len(chosen)} image(s)…"):
        for image in chosen:
            try:
                analysed.append(analyse(image, note))
            except ModelUnavailable as exc:
                st.error(str(exc))
                return
            except DicomResultError as exc:
                problems.append(f"Image {image.instance.number}: its results cannot be stored ({exc}).")
    st.session_state["pacs_analysed"] = (study.study_uid, analysed)
    for problem in problems:
        st.warning(problem)


def result_ui(item, column) -> None:
    r = item.result
    name = f"Image {item.source.instance.number}"
    if not r.diagnosis_shown:
        column.image(item.source.rgb, width="stretch", caption=name)
        refused_ui(column, r)
        return
    column.image(mask_overlay(item.source.rgb, r.mask), width="stretch", caption=f"{name} · lesion mask")
    top, p = r.top3[0]
    mark = " ▲" if top in MALIGNANT_CODES else ""
    verdict, referral = verdict_of(r), referral_of(r)
    alert = {"refer": column.error, "review": column.warning}.get(verdict.level, column.info)
    alert(f"**{verdict.headline}.** {verdict.because} {referral.numbers}.")
    column.markdown(f"**{class_label(top)}**{mark} · {p:.1%} · uncertainty {r.uncertainty_level}")
    if r.ood_level in GREYED_LEVELS:
        column.warning(f"{GREYED_HEADLINES[r.ood_level]}. {r.ood_reason}")


def results_ui(pacs: Pacs, study: Study) -> None:
    """The analyses of this study and the store button."""
    held = st.session_state.get("pacs_analysed")
    if not held or held[0] != study.study_uid or not held[1]:
        return
    analysed = held[1]
    st.subheader("Results")
    columns = st.columns(PER_ROW)
    for index, item in enumerate(analysed):
        column = columns[index % PER_ROW]
        result_ui(item, column)
        column.download_button("PDF report", item.pdf, file_name=f"image{item.source.instance.number}_lesionlens.pdf",
                               mime="application/pdf", key=f"pacs_pdf_{item.source.instance.sop_uid}",
                               icon=":material/picture_as_pdf:", on_click=record_result,
                               args=("report_download", item.source.data, item.result))
    objects = sum(len(item.objects) for item in analysed)
    st.caption(f"Storing sends {objects} DICOM object(s) into this study: per image the PDF report (Encapsulated "
               "PDF) and, for dermoscopy images, the lesion mask (Segmentation) and the findings (Structured Report), "
               "each in a LesionLens series referencing the source image. Storing again adds nothing.")
    if not st.button("Store results in PACS", key="pacs_store", icon=":material/cloud_upload:"):
        return
    try:
        with st.spinner("Storing…"):
            outcome = store_results(pacs, study.study_uid, analysed)
    except PacsError as exc:
        st.error(str(exc), icon=":material/cloud_off:")
        return
    if outcome.stored:
        record_pacs_store([(item.source.data, item.result) for item in analysed])
        already = f"; {outcome.already} were already there" if outcome.already else ""
        st.success(f"Stored {outcome.stored} object(s) in the study{already}.", icon=":material/cloud_done:")
    else:
        st.info(f"The study already holds these {outcome.already} result object(s); nothing was stored again.")


def pacs_page() -> None:
    st.title("PACS")
    st.caption(DISCLAIMER)
    try:
        pacs = Pacs.from_config()
    except PacsError as exc:
        st.info(f"{exc}. See docs/pacs.md.", icon=":material/settings:")
        return
    c1, c2 = st.columns([3, 2], vertical_alignment="center")
    c1.caption(f"Image archive: `{pacs.url}` (DICOMweb). Images are analysed in memory; results are stored only when "
               "you press **Store results in PACS**.")
    identifiers = c2.toggle("Include patient identifiers", key="pacs_identifiers",
                            help="Show patient IDs and names. Off: studies and images are shown without them.")
    search_ui(pacs)
    study = study_ui(st.session_state["pacs_studies"], identifiers) if "pacs_studies" in st.session_state else None
    if study is None:
        return
    chosen = images_ui(pacs, study, identifiers)
    analyse_ui(study, chosen)
    results_ui(pacs, study)


pacs_page()
