"""A lesion history from a real Orthanc (core.io.demo_pacs.Orthanc): a made-up patient with four studies, each
holding one photograph of each of two HAM10000 lesions (core.io.demo_pacs.history_objects). The lesions are found
and told apart by their tags (core.analysis.pacs_history), one is analysed as a history, and its SR is stored back
into the newest study once (a second store adds nothing), reads back with the history's figures and passes
dciodvfy; the History page does the same in AppTest."""
from __future__ import annotations

import io

import highdicom as hd
import pydicom
import pytest
from apptest_support import alerts, page, start_app
from test_dicom_results import dciodvfy_errors

from core.analysis.lesion_history import lesion_history
from core.analysis.pacs_history import history_objects, patient_lesions, series_findings, store_history, visits_of
from core.io.demo_pacs import HISTORY_DATES, HISTORY_PATIENT, Orthanc, free_port
from core.io.demo_pacs import history_objects as demo_history
from core.io.dicom_results import DAYS, SERIES_VERDICT, SERIES_VERDICT_VALUES, VISITS, Findings
from core.io.pacs import Pacs
from tests.test_followup import analyzer, band  # noqa: F401 - the shipped Analyzer and band fixtures


@pytest.fixture(scope="module")
def server(data_dir):
    orthanc = Orthanc(free_port())
    Pacs(orthanc.url).store([data for _, data in demo_history(data_dir)])
    yield orthanc
    orthanc.stop()


def _sr_values(data: bytes) -> tuple[dict, dict]:
    report = hd.sr.MeasurementReport.from_sequence([hd.sr.srread(io.BytesIO(data))])
    group = report.get_image_measurement_groups()[0]
    return ({m.name: m.value for m in group.get_measurements()},
            {e.name: e.value for e in group.get_qualitative_evaluations()})


def test_the_patients_lesion_is_found_analysed_and_its_sr_stored_once(server, analyzer, band, tmp_path):
    pacs = Pacs(server.url)
    lesions, problems = patient_lesions(pacs, HISTORY_PATIENT)
    assert problems == [] and len(lesions) == 2
    assert {s.laterality for s in lesions} == {"left", "right"}  # told apart by their tags
    series = lesions[0]
    assert [v.date.strftime("%Y%m%d") for v in series.visits] == list(HISTORY_DATES)
    assert len({v.study.study_uid for v in series.visits}) == 4
    assert len({v.image.lesion["series"] for v in series.visits}) == 1
    history = lesion_history(analyzer, visits_of(series), band)
    assert len(history.visits) == 4 and history.days == 455
    newest = history.visits[-1].result
    findings = Findings.of(newest, newest.refer, newest.referral_threshold, analyzer.version)
    objects = history_objects(history, series, findings)
    newest_study = series.visits[-1].study.study_uid
    before = len(pacs.instances(newest_study))
    assert (store_history(pacs, series, objects).stored, len(pacs.instances(newest_study))) == (1, before + 1)
    again = store_history(pacs, series, history_objects(history, series, findings))
    assert (again.stored, again.already, len(pacs.instances(newest_study))) == (0, 1, before + 1)
    ds = pydicom.dcmread(io.BytesIO(objects[0]), stop_before_pixels=True)
    stored = pacs.retrieve(newest_study, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    measurements, evaluations = _sr_values(stored)
    assert measurements[hd.sr.CodedConcept.from_code(VISITS)] == 4
    assert measurements[hd.sr.CodedConcept.from_code(DAYS)] == 455
    expected = series_findings(history, series).verdict
    assert evaluations[hd.sr.CodedConcept.from_code(SERIES_VERDICT)] == \
        hd.sr.CodedConcept.from_code(SERIES_VERDICT_VALUES[expected])
    assert series.visits[-1].instance.sop_uid in str(pydicom.dcmread(io.BytesIO(stored)))  # references the image
    assert dciodvfy_errors(stored, tmp_path) == []
    # the other studies are left as they were
    assert all(len(pacs.instances(v.study.study_uid)) == 2 for v in series.visits[:-1])


def test_history_page_from_the_pacs(server, data_dir, monkeypatch):
    monkeypatch.setenv("LESIONLENS_PACS_URL", server.url)
    at = page(start_app(data_dir), "app_pages/history.py")
    at.radio(key="history_mode").set_value("PACS").run()
    at.text_input(key="history_patient").input(HISTORY_PATIENT)
    next(b for b in at.button if b.label == "Find the patient's lesions").click().run()
    assert not at.exception, at.exception
    assert len(at.selectbox(key="history_pacs_lesion").options) == 2
    assert len(at.get("plotly_chart")) == 6 and len(at.dataframe[0].value) == 4
    at.button(key="history_store").click().run()
    assert not at.exception, at.exception
    assert any(s.value.startswith("Stored the history report") or "already holds" in s.value
               for s in list(at.success) + list(at.info)), alerts(at)
    at.button(key="history_store").click().run()
    assert any("already holds this history report" in i.value for i in at.info), alerts(at)
