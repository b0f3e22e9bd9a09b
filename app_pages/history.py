"""Lesion history: the images of one lesion over several visits (uploads with their dates, a patient's studies in the
PACS, or a HAM10000 lesion photographed several times), each analysed and compared with the first and the previous
visit (core.analysis.lesion_history), charts over time with the no-change band, one verdict, a PDF; for a PACS
series the findings stored back as a DICOM SR in the newest study. Nothing uploaded or retrieved is stored on disk."""
from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pandas as pd
import streamlit as st

from core.analysis.followup import BASELINE_COLOUR, SameImage, contours
from core.analysis.lesion_history import (CHART_KEYS, MEASURE_BY_KEY, VISIT_COLUMNS, Visit, chart_rows,
                                          lesion_history, unit_of, visit_rows)
from core.io.intake import FILE_EXTENSIONS, ImageRejected, load_image_file, load_visit
from ui.analyzers import ModelUnavailable, pool
from ui.data_folder import current_data_dir
from ui.figures import history_figure
from ui.followup import noise_band, repeated_lesions
from ui.formatting import DISCLAIMER, class_label
from ui.images import digest
from ui.model_files import model_card
from ui.referral import session_threshold, verdict_of

MODES = ("Upload images", "PACS", "Dataset lesion (HAM10000)")
MAX_VISITS = 12
PER_ROW = 4


# ---------------------------------------------------------------- input: visits (rgb, date, name, mm, context)
def upload_ui() -> list[dict] | None:
    uploads = st.file_uploader("Images of one lesion, one per visit", type=list(FILE_EXTENSIONS),
                               accept_multiple_files=True, key="history_uploads",
                               help="Analysed in memory and never stored. A DICOM file gives its date and pixel size.")
    if not uploads:
        st.caption("Upload two or more dermoscopic images of the same lesion taken at different visits.")
        return None
    visits, seen = [], {}
    for upload in uploads[:MAX_VISITS]:
        data = upload.getvalue()
        if digest(data) in seen:
            st.error(f"**{upload.name}** is the same file as **{seen[digest(data)]}**: a history needs a new "
                     "photograph of the lesion at each visit.", icon=":material/content_copy:")
            continue
        seen[digest(data)] = upload.name
        try:
            image = load_visit(data, upload.name)
        except ImageRejected as exc:
            st.error(f"Cannot analyse **{upload.name}**: {exc}")
            continue
        taken = image.taken
        if taken is None:
            taken = st.date_input(f"Date of **{upload.name}**", value=None, key=f"history_date_{digest(data)}",
                                  max_value=dt.date.today(), format="YYYY-MM-DD")
        else:
            st.caption(f"**{upload.name}**: {taken.isoformat()} (from its DICOM tags)")
        if taken is None:
            continue
        visits.append({"rgb": image.frames[0], "date": taken, "name": upload.name, "mm": image.mm_per_pixel,
                       "context": image.context, "key": digest(data)})
    if len(uploads) > MAX_VISITS:
        st.warning(f"The first {MAX_VISITS} of {len(uploads)} images are used.")
    if len(visits) < 2:
        st.info("Give each image its date (two or more dated images are needed).")
        return None
    return visits


def dataset_ui(data_dir: Path | None) -> list[dict] | None:
    """A random HAM10000 lesion with three or more photographs (held-out test lesions first). HAM10000 has no dates:
    the visits are spaced 90 days apart in image-id order."""
    if data_dir is None or not (data_dir / "ham10000").is_dir():
        st.info("Set a data folder holding ham10000/ in the sidebar to try real lesions photographed several times.")
        return None
    table = repeated_lesions(str(data_dir))
    counts = table["lesion_id"].map(table["lesion_id"].value_counts())
    table = table[counts >= 3]
    if st.button("Random lesion photographed three or more times", key="history_pick", type="primary",
                 icon=":material/casino:"):
        held_out = table[table["split"] == "test"]
        lesion = random.choice(sorted(set((held_out if len(held_out) else table)["lesion_id"])))
        st.session_state["history_lesion"] = lesion
    lesion = st.session_state.get("history_lesion")
    if lesion is None:
        return None
    rows = table[table["lesion_id"] == lesion].sort_values("image_id")
    st.caption(f"Lesion `{lesion}` ({class_label(rows['dx'].iloc[0])}): {len(rows)} photographs taken at one visit, "
               "shown as visits 90 days apart (HAM10000 records no dates), so nothing has really changed.")
    start = dt.date(2026, 1, 5)
    return [{"rgb": load_image_file(path), "date": start + dt.timedelta(days=90 * i), "name": image_id, "mm": None,
             "context": None, "key": image_id} for i, (path, image_id) in enumerate(zip(rows["image_path"],
                                                                                     rows["image_id"]))]


def pacs_ui() -> list[dict] | None:
    from core.analysis.pacs_history import patient_lesions
    from core.io.pacs import Pacs, PacsError

    try:
        pacs = Pacs.from_config()
    except PacsError as exc:
        st.info(f"{exc}. See docs/pacs.md.", icon=":material/settings:")
        return None
    with st.form("history_pacs_form", border=True):
        patient = st.text_input("Patient ID", key="history_patient", placeholder="e.g. DEMO-H01")
        found = st.form_submit_button("Find the patient's lesions", type="primary", icon=":material/search:")
    if found:
        try:
            with st.spinner("Retrieving the patient's dermoscopy images…"):
                st.session_state["history_pacs"] = (patient.strip(), *patient_lesions(pacs, patient))
        except PacsError as exc:
            st.error(str(exc), icon=":material/cloud_off:")
            st.session_state.pop("history_pacs", None)
    held = st.session_state.get("history_pacs")
    if not held:
        return None
    _, lesions, problems = held
    for problem in problems:
        st.warning(problem)
    if not lesions:
        st.info("No dermoscopy image of this patient was found.")
        return None
    index = st.selectbox("Lesion (body site · laterality · series description)", range(len(lesions)),
                         format_func=lambda i: lesions[i].label, key="history_pacs_lesion")
    series = lesions[index]
    st.session_state["history_pacs_series"] = (pacs, series)
    return [{"rgb": v.image.frames[0], "date": v.date, "name": f"study of {v.date.isoformat()}",
             "mm": v.image.mm_per_pixel, "context": v.image.context, "key": v.instance.sop_uid}
            for v in series.visits]


# ---------------------------------------------------------------- analysis and results
def history_for(visits: list[dict], band, band_text: str):
    key = (tuple((v["key"], v["date"], v["mm"]) for v in visits), pool().version, band_text, session_threshold())
    held = st.session_state.get("history_result")
    if held is None or held[0] != key:
        with st.spinner(f"Analysing and registering {len(visits)} visits…"), pool().borrow() as analyzer:
            results = [analyzer.analyze(v["rgb"], context=v["context"]) for v in visits]
            history = lesion_history(analyzer, [Visit(v["rgb"], v["date"], v["name"], v["mm"]) for v in visits],
                                     band, band_text, results=results, verdict=verdict_of)
        held = (key, history)
        st.session_state["history_result"] = held
    return held[1]


def thumbnails(history) -> list[tuple[str, object]]:
    out = []
    for number, analysis in enumerate(history.visits, start=1):
        result = analysis.result
        what = (f"{class_label(result.label)} {result.probs[result.label]:.0%} · {verdict_of(result).headline}"
                if result.diagnosis_shown else "no diagnosis (not dermoscopy)")
        doubt = " · may not be the same lesion" if analysis.doubt else ""
        edge = " · touches the border" if analysis.edge else ""
        out.append((f"Visit {number} · {analysis.visit.date.isoformat()} · {what}{doubt}{edge}",
                    contours(analysis.visit.rgb, result.mask, BASELINE_COLOUR)))
    return out


def verdict_ui(history, band, band_text: str) -> None:
    text = history.verdict()
    if history.doubted() and len(history.doubted()) == len(history.visits) - 1:
        st.warning(f"**{text}**", icon=":material/warning:")
    elif history.first_change() is not None:
        st.error(f"**{text}**", icon=":material/trending_up:")
    else:
        st.success(f"**{text}**", icon=":material/check_circle:")
    edges = history.edge_visits()
    if edges:
        st.warning(f"The lesion touches the image border at visit(s) {', '.join(map(str, edges))}: it may continue "
                   "outside the image, so sizes there are not compared.", icon=":material/crop_free:")
    if band is None:
        st.warning(f"**No-change band unavailable:** {band_text}", icon=":material/warning:")
    else:
        st.caption(f"No-change band: {band_text}")


def visits_ui(history) -> None:
    shown = thumbnails(history)
    for start in range(0, len(shown), PER_ROW):
        for column, (caption, image) in zip(st.columns(PER_ROW), shown[start:start + PER_ROW]):
            column.image(image, width="stretch", caption=caption)


def charts_ui(history) -> None:
    columns = st.columns(2)
    for index, key in enumerate(CHART_KEYS):
        _, unit = unit_of(history, key)
        figure = history_figure(chart_rows(history, key), MEASURE_BY_KEY[key].label, unit, history.first_beyond(key))
        columns[index % 2].plotly_chart(figure, key=f"history_chart_{key}", config={"displayModeBar": False})
    st.caption("Green: the no-change band around the first visit's value (two photographs of one lesion differ this "
               "much 19 times in 20). Orange points are beyond it; the dashed line marks the first such visit. Sizes "
               "are in the first visit's pixels, or millimetres when its pixel size is known.")


def table_ui(history) -> None:
    st.dataframe(pd.DataFrame(visit_rows(history, verdict_of), columns=list(VISIT_COLUMNS)), hide_index=True,
                 key="history_table")


def export_ui(history, band_text: str) -> None:
    from core.reports.history_report import build_history_pdf

    note = st.text_input("Note for the PDF (optional)", key="history_note", max_chars=500,
                         placeholder="e.g. reason for follow-up; no patient identifiers")
    card = model_card()

    def build() -> bytes:
        return build_history_pdf(history=history, thumbnails=thumbnails(history), band_text=band_text,
                                 verdict=verdict_of, clinician_note=note,
                                 model_info={"version": card.version, "created": card.display("created")})

    st.download_button("Download lesion history (PDF)", build, file_name="lesionlens_history.pdf",
                       mime="application/pdf", key="history_pdf", type="primary", icon=":material/picture_as_pdf:")


def store_ui(history) -> None:
    """The newest study gets the history's findings as a DICOM SR (once: storing again adds nothing)."""
    from core.analysis.pacs_history import history_objects, store_history
    from core.io.dicom_results import DicomResultError, Findings
    from core.io.pacs import PacsError
    from ui.audit_log import record_pacs_store
    from ui.referral import referral_of

    pacs, series = st.session_state["history_pacs_series"]
    newest = history.visits[-1].result
    if not newest.diagnosis_shown:
        st.info("The newest image is not a dermoscopy image: no findings to store.")
        return
    st.caption("Storing sends one Structured Report into the newest study: the newest image's findings and the "
               "history's (visits, days, verdict, first visit with a change, diameter change), referencing that "
               "image. Storing again adds nothing.")
    if not st.button("Store the history in the PACS", key="history_store", icon=":material/cloud_upload:"):
        return
    referral = referral_of(newest)
    try:
        objects = history_objects(history, series, Findings.of(newest, referral.refer, referral.threshold,
                                                               pool().version))
        outcome = store_history(pacs, series, objects)
    except (PacsError, DicomResultError) as exc:
        st.error(str(exc), icon=":material/cloud_off:")
        return
    if outcome.stored:
        record_pacs_store([(series.visits[-1].data, newest)])
        st.success(f"Stored the history report in the study of {series.visits[-1].date.isoformat()}.",
                   icon=":material/cloud_done:")
    else:
        st.info("The newest study already holds this history report; nothing was stored again.")


def history_page() -> None:
    st.title("Lesion history")
    st.caption(DISCLAIMER)
    mode = st.radio("Images", MODES, horizontal=True, key="history_mode", label_visibility="collapsed")
    visits = (upload_ui() if mode == MODES[0] else pacs_ui() if mode == MODES[1]
              else dataset_ui(current_data_dir()))
    if not visits:
        return
    band, band_text = noise_band()
    try:
        pool().wait()
        history = history_for(visits, band, band_text)
    except (ModelUnavailable, SameImage) as exc:
        st.error(str(exc))
        return
    verdict_ui(history, band, band_text)
    visits_ui(history)
    charts_ui(history)
    table_ui(history)
    export_ui(history, band_text)
    if mode == MODES[1]:
        store_ui(history)


history_page()
