"""The PACS page (app_pages/pacs.py) in AppTest against a real Orthanc: search by patient ID -> the study listed
without identifiers -> its dermoscopy images -> analyse -> store results in PACS -> the study holds the PDF, the
SEG and the SR of each image, with the app's PDF bytes and mask; storing again stores nothing; identifiers appear
only when asked for; an unreachable server and a study without dermoscopy are said in words."""
from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from apptest_support import alerts, dataframe, page, start_app, texts

from core.io.demo_pacs import Orthanc, demo_objects, free_port
from core.io.pacs import Pacs


@pytest.fixture(scope="module")
def server(data_dir):
    orthanc = Orthanc(free_port())
    objects = demo_objects(data_dir, 4)
    Pacs(orthanc.url).store([data for _, data in objects])
    yield orthanc, objects
    orthanc.stop()


def _button(at, label):
    return next(b for b in at.button if b.label == label)


def _search(at, patient_id: str, modality: str = "DMS"):
    at.text_input(key="pacs_patient").input(patient_id)
    at.selectbox(key="pacs_modality").set_value(modality)
    _button(at, "Search studies").click().run()
    assert not at.exception, at.exception
    return at


def test_search_analyse_store(server, data_dir, monkeypatch):
    orthanc, objects = server
    patient = objects[0][0]
    monkeypatch.setenv("LESIONLENS_PACS_URL", orthanc.url)
    at = page(start_app(data_dir), "app_pages/pacs.py")
    at = _search(at, patient.patient_id)
    table = dataframe(at, "Date")
    assert len(table) == 1 and "Patient ID" not in table.columns
    assert patient.patient_id not in at.selectbox(key="pacs_study").options[0]
    assert patient.name.replace("^", " ") not in texts(at) + " ".join(c for i in at.image for c in i.captions)
    assert len([c for c in at.checkbox if c.key.startswith("pacs_pick_")]) == 2
    at.button(key="pacs_analyse").click().run()
    assert not at.exception, at.exception
    study_uid, analysed = at.session_state["pacs_analysed"]
    assert study_uid == patient.study_uid and len(analysed) == 2
    at.button(key="pacs_store").click().run()
    assert [s.value for s in at.success] == ["Stored 6 object(s) in the study."], alerts(at)
    pacs = Pacs(orthanc.url)
    assert len(pacs.instances(patient.study_uid)) == 2 + 6
    for item in analysed:
        pdf_data, seg_data, _ = (pacs.retrieve(patient.study_uid, *_uids(data)) for data in item.objects)
        pdf = pydicom.dcmread(io.BytesIO(pdf_data))
        assert pdf.EncapsulatedDocument[:pdf.EncapsulatedDocumentLength] == item.pdf
        seg = hd.seg.segread(io.BytesIO(seg_data))
        pixels = seg.get_pixels_by_source_instance([item.source.instance.sop_uid], combine_segments=True)[0]
        assert np.array_equal(pixels > 0, item.result.mask > 0)
    at.button(key="pacs_store").click().run()
    assert any("already holds these 6" in a for a in alerts(at)), alerts(at)
    assert len(pacs.instances(patient.study_uid)) == 2 + 6
    at.toggle(key="pacs_identifiers").set_value(True).run()
    assert "Patient ID" in dataframe(at, "Date").columns
    assert patient.patient_id in at.selectbox(key="pacs_study").options[0]


def test_studies_are_listed_newest_first_and_told_apart(server, data_dir, monkeypatch):
    """Without identifiers the studies were listed unsorted and looked alike: newest first, each with its date and
    time, modality, instance count and a short hashed ID."""
    orthanc, objects = server
    monkeypatch.setenv("LESIONLENS_PACS_URL", orthanc.url)
    at = _search(page(start_app(data_dir), "app_pages/pacs.py"), "")
    table = dataframe(at, "Date")
    studies = {patient.study_uid: patient for patient, _ in objects}
    assert list(table["Date"]) == sorted(table["Date"], reverse=True) and len(table) == len(studies) > 1
    assert list(table["Date"]) == [f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in sorted(
        {p.study_date for p in studies.values()}, reverse=True)]
    # every study holds its dermoscopy images; one may also hold what an earlier test stored (the server is shared)
    assert table["Time"].str.match(r"^\d\d:\d\d$").all()
    assert all("DMS" in modalities.split(", ") for modalities in table["Modalities"]), list(table["Modalities"])
    assert table["Study"].nunique() == len(table)
    options = at.selectbox(key="pacs_study").options
    assert len(set(options)) == len(options) and all(f"study {short}" in option
                                                      for short, option in zip(table["Study"], options))
    assert not any(p.patient_id in option for p in studies.values() for option in options)


def _uids(data: bytes) -> tuple[str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return ds.SeriesInstanceUID, ds.SOPInstanceUID


def test_unreachable_server_and_unconfigured_are_said(data_dir, monkeypatch):
    monkeypatch.delenv("LESIONLENS_PACS_URL", raising=False)
    at = page(start_app(data_dir), "app_pages/pacs.py")
    assert any("No PACS is configured" in a for a in alerts(at)), alerts(at)
    monkeypatch.setenv("LESIONLENS_PACS_URL", f"http://127.0.0.1:{free_port()}/dicom-web")
    at = _search(page(start_app(data_dir), "app_pages/pacs.py"), "")
    assert any("cannot be reached" in a for a in alerts(at)), alerts(at)


def test_study_without_dermoscopy_is_said(server, data_dir, monkeypatch):
    orthanc, objects = server
    patient, data = objects[2]
    ct = pydicom.dcmread(io.BytesIO(data))
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ct.Modality, ct.PatientID = "CT", "CT-ONLY"
    ct.StudyInstanceUID, ct.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    out = io.BytesIO()
    ct.save_as(out, enforce_file_format=True)
    Pacs(orthanc.url).store([out.getvalue()])
    monkeypatch.setenv("LESIONLENS_PACS_URL", orthanc.url)
    at = page(start_app(data_dir), "app_pages/pacs.py")
    at = _search(at, "CT-ONLY", modality="")
    assert any("no dermoscopy" in a for a in alerts(at)), alerts(at)
