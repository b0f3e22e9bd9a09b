"""core.io.pacs against a real Orthanc (core.io.demo_pacs.Orthanc, Debian's orthanc + orthanc-dicomweb) on a free port.

If Orthanc is not installed the fixture fails (bash run.sh test installs it). 20 HAM10000 JPEGs wrapped as DICOM
with made-up patients (10 studies) are stored by STOW-RS, found by QIDO-RS (patient ID, date, modality), listed,
retrieved by WADO-RS: the retrieved pixels equal the JPEG's decode, the patient context equals what was written,
and the Analyzer gives the retrieved image the same mask as the JPEG. A study's images analysed as the PACS page
does (ui.pacs_results) and stored back come back as written: the SEG's pixels are the app's mask, the Encapsulated
PDF's bytes the app's PDF, the SR's probabilities the app's, each object passes dciodvfy; storing the same analysis
again stores nothing. Errors are sentences: an unreachable server, refused credentials, a study without dermoscopy,
a store the server rejects (with its reason); storing the same object twice keeps one.
"""
from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from test_dicom_results import dciodvfy_errors

from core.data.classes import CLASS_CODES
from core.io.demo_pacs import Orthanc, demo_objects, free_port
from core.io.dicom_input import read_dicom
from core.io.dicom_results import PROBABILITY
from core.io.intake import load_image
from core.io.pacs import Pacs, PacsError

COUNT = 20


@pytest.fixture(scope="module")
def server():
    orthanc = Orthanc(free_port())  # raises (test error, not a skip) when Orthanc is missing
    yield orthanc
    orthanc.stop()


@pytest.fixture(scope="module")
def stored(server, data_dir):
    objects = demo_objects(data_dir, COUNT)
    pacs = Pacs(server.url)
    pacs.store([data for _, data in objects])
    return pacs, objects


def test_search_finds_every_study(stored):
    pacs, objects = stored
    studies = pacs.search_studies(modality="DMS")
    assert len(studies) == COUNT // 2 and sum(s.instances for s in studies) == COUNT
    first = objects[0][0]
    by_patient = pacs.search_studies(patient_id=first.patient_id)
    assert [s.study_uid for s in by_patient] == [first.study_uid]
    assert {s.study_uid for s in pacs.search_studies(date=first.study_date)} >= {first.study_uid}
    assert pacs.search_studies(patient_id="NOBODY") == []
    # newest first (the server answers in no useful order), each with its time and its own short ID
    assert [(s.date, s.time) for s in studies] == sorted(((s.date, s.time) for s in studies), reverse=True)
    assert studies[0].date > studies[-1].date and all(s.time for s in studies)
    assert len({s.short_id for s in studies}) == len(studies)


def test_each_demo_image_carries_its_own_context(data_dir):
    """The demo PACS wrote the first image's age and site into every image of its study: each now carries its own
    HAM10000 row's (the sex stays the patient's: the study's first image's)."""
    import csv

    from core.data.patient_context import PatientContext

    with open(data_dir / "ham10000" / "HAM10000_metadata.csv", newline="") as handle:
        meta = {row["image_id"]: row for row in csv.DictReader(handle)}
    paths = sorted((data_dir / "ham10000" / "fullres" / "images").glob("ISIC_*.jpg"))[:COUNT]
    contexts = []
    for path, (_, data) in zip(paths, demo_objects(data_dir, COUNT)):
        row = meta[path.stem]
        context = read_dicom(data).context
        own = PatientContext.from_metadata(row["age"], row["sex"], row["localization"])
        contexts.append((context.age, context.site))
        assert contexts[-1] == (own.age, own.site), path.stem
    assert any(first != second for first, second in zip(contexts[::2], contexts[1::2]))  # studies with two contexts


def test_retrieve_gives_the_written_pixels_and_context(stored, data_dir):
    pacs, objects = stored
    for patient, data in objects[:4]:
        instances = pacs.dermoscopy_instances(patient.study_uid)
        assert len(instances) == 2
        source = read_dicom(data)
        chosen = next(i for i in instances if i.sop_uid == source.uids["SOPInstanceUID"])
        image = read_dicom(pacs.retrieve(chosen.study_uid, chosen.series_uid, chosen.sop_uid))
        assert np.array_equal(image.frames[0], source.frames[0])
        expected = (patient.age, patient.sex, patient.site)
        assert (image.context.age, image.context.sex, image.context.site) == expected


def test_analysis_of_the_retrieved_image_equals_the_jpeg_analysis(stored, data_dir, repo_root):
    from core.analysis.inference import Analyzer
    pacs, objects = stored
    patient, data = objects[0]
    jpeg = sorted((data_dir / "ham10000" / "fullres" / "images").glob("ISIC_*.jpg"))[0].read_bytes()
    instance = next(i for i in pacs.dermoscopy_instances(patient.study_uid) if i.number == 1)
    retrieved = load_image(pacs.retrieve(instance.study_uid, instance.series_uid, instance.sop_uid), "pacs.dcm")
    analyzer = Analyzer.load(repo_root / "weights")
    assert np.array_equal(analyzer.analyze(retrieved).mask, analyzer.analyze(load_image(jpeg)).mask)


def test_storing_twice_keeps_one(stored):
    pacs, objects = stored
    patient, data = objects[0]
    before = len(pacs.instances(patient.study_uid))
    pacs.store([data])
    assert len(pacs.instances(patient.study_uid)) == before
    assert pacs.exists(patient.study_uid, read_dicom(data).uids["SOPInstanceUID"])


def test_store_into_another_study_is_rejected_with_the_reason(stored, data_dir):
    pacs, objects = stored
    with pytest.raises(PacsError, match="rejected|could not store"):
        pacs.store([objects[2][1]], study_uid=objects[0][0].study_uid)


def test_study_without_dermoscopy_is_said(stored):
    pacs, _ = stored
    with pytest.raises(PacsError, match="no dermoscopy"):
        pacs.dermoscopy_instances("1.2.3.4.5.6.7.8.9")


def test_unreachable_server_is_said():
    with pytest.raises(PacsError, match="cannot be reached"):
        Pacs(f"http://127.0.0.1:{free_port()}/dicom-web").search_studies()


def test_no_url_is_said(monkeypatch):
    monkeypatch.delenv("LESIONLENS_PACS_URL", raising=False)
    with pytest.raises(PacsError, match="LESIONLENS_PACS_URL"):
        Pacs("")


def _stored_object(pacs: Pacs, study_uid: str, data: bytes) -> bytes:
    """What the PACS holds (WADO-RS) under the SOP Instance UID of `data`."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return pacs.retrieve(study_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def test_results_stored_back_read_back_as_written(stored, tmp_path):
    from ui.pacs_results import analyse, retrieve, store_results
    pacs, objects = stored
    patient = objects[2][0]
    study = patient.study_uid
    images = [retrieve(pacs, i) for i in pacs.dermoscopy_instances(study)]
    written = {read_dicom(data).uids["SOPInstanceUID"]: p for p, data in objects if p.study_uid == study}
    assert all((i.image.context.age, i.image.context.sex, i.image.context.site) ==  # each image's own context
               (written[i.instance.sop_uid].age, written[i.instance.sop_uid].sex, written[i.instance.sop_uid].site)
               for i in images)
    analysed = [analyse(image) for image in images]
    assert all(a.result.diagnosis_shown for a in analysed)  # HAM10000 dermoscopy: PDF + SEG + SR each
    outcome = store_results(pacs, study, analysed)
    assert (outcome.stored, outcome.already) == (6, 0)
    assert len(pacs.instances(study)) == 2 + 6
    for item in analysed:
        pdf_object, seg_object, sr_object = (_stored_object(pacs, study, data) for data in item.objects)
        pdf = pydicom.dcmread(io.BytesIO(pdf_object))
        assert pdf.EncapsulatedDocument[:pdf.EncapsulatedDocumentLength] == item.pdf
        seg = hd.seg.segread(io.BytesIO(seg_object))
        pixels = seg.get_pixels_by_source_instance([item.source.instance.sop_uid], combine_segments=True)[0]
        assert np.array_equal(pixels > 0, item.result.mask > 0)
        report = hd.sr.MeasurementReport.from_sequence([hd.sr.srread(io.BytesIO(sr_object))])
        values = {m.name: m.value for m in report.get_image_measurement_groups()[0].get_measurements()}
        for code in CLASS_CODES:
            assert values[hd.sr.CodedConcept.from_code(PROBABILITY[code])] == pytest.approx(item.result.probs[code],
                                                                                            abs=1e-6)
        source = item.source.instance.sop_uid
        for data in (pdf_object, seg_object, sr_object):
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            sex = {"male": "M", "female": "F"}.get(patient.sex, "")
            assert (ds.StudyInstanceUID, ds.PatientID, ds.PatientSex) == (study, patient.patient_id, sex)
            assert source in str(ds)  # each references its source instance
            assert dciodvfy_errors(data, tmp_path) == []
    again = store_results(pacs, study, [analyse(image) for image in images])  # a retry: a new analysis, new PDF
    assert (again.stored, again.already) == (0, 6)
    assert len(pacs.instances(study)) == 2 + 6


def test_refused_credentials_are_said(data_dir):
    orthanc = Orthanc(free_port(), users={"clinic": "right-password"})
    try:
        assert Pacs(orthanc.url, "clinic", "right-password").search_studies() == []
        with pytest.raises(PacsError, match="refused the credentials"):
            Pacs(orthanc.url, "clinic", "wrong-password").search_studies()
        with pytest.raises(PacsError, match="refused the credentials"):
            Pacs(orthanc.url).store([demo_objects(data_dir, 1)[0][1]])
    finally:
        orthanc.stop()
