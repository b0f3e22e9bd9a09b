"""core.pacs against a real Orthanc (core.demo_pacs.Orthanc, Debian's orthanc + orthanc-dicomweb) on a free port.

If Orthanc is not installed the fixture fails (bash run.sh test installs it). 20 HAM10000 JPEGs wrapped as DICOM
with made-up patients (10 studies) are stored by STOW-RS, found by QIDO-RS (patient ID, date, modality), listed,
retrieved by WADO-RS: the retrieved pixels equal the JPEG's decode, the patient context equals what was written,
and the Analyzer gives the retrieved image the same mask as the JPEG. Errors are sentences: an unreachable server,
a study without dermoscopy, a store the server rejects (with its reason); storing the same object twice keeps one.
"""
from __future__ import annotations

import socket

import numpy as np
import pytest

from core.demo_pacs import Orthanc, demo_objects
from core.dicom_input import read_dicom
from core.intake import load_image
from core.pacs import Pacs, PacsError

COUNT = 20


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    orthanc = Orthanc(_free_port())  # raises (test error, not a skip) when Orthanc is missing
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
    from core.inference import Analyzer
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
        Pacs(f"http://127.0.0.1:{_free_port()}/dicom-web").search_studies()


def test_no_url_is_said(monkeypatch):
    monkeypatch.delenv("LESIONLENS_PACS_URL", raising=False)
    with pytest.raises(PacsError, match="LESIONLENS_PACS_URL"):
        Pacs("")
