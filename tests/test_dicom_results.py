"""core.io.dicom_results on a real dermoscopy image wrapped as DICOM: each object passes dciodvfy (dicom3tools) without
errors; the Encapsulated PDF holds the PDF byte for byte, the Segmentation the mask pixel for pixel at the source's
size, the SR the findings (read back with highdicom's own SR parser); UIDs depend only on source, model version,
kind (and threshold); the constructors refuse what they cannot build. No server needed (tests/test_pacs.py stores
the objects in a real Orthanc)."""
from __future__ import annotations

import io
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from core.data.classes import CLASS_CODES
from core.io.dicom_input import MadeUpPatient, wrap_jpeg
from core.io.dicom_results import (MOST_PROBABLE, PROBABILITY, REFERRAL, REFERRAL_THRESHOLD, REFERRAL_VALUES,
                                   UNCERTAINTY, UNCERTAINTY_VALUES, DicomResultError, Findings, encapsulated_pdf,
                                   findings_report, lesion_segmentation, part10_bytes, result_objects, source_header)

PROBS = dict(zip(CLASS_CODES, (0.02, 0.03, 0.10, 0.01, 0.30, 0.50, 0.04)))
FINDINGS = Findings(PROBS, "nv", 0.3125, True, 0.0215, "moderate", "in", "test-1")
PDF = b"%PDF-1.4\n% a tiny document of odd length:\n%%EOF"


@pytest.fixture(scope="module")
def source(data_dir):
    jpeg = sorted((data_dir / "ham10000" / "fullres" / "images").glob("ISIC_*.jpg"))[0].read_bytes()
    return wrap_jpeg(jpeg, MadeUpPatient("RES-1", age=61, sex="female", site="back", study_uid="1.2.826.0.1.3680043.8"
                                                                                                ".498.1"))


@pytest.fixture(scope="module")
def mask(source):
    header = source_header(source)
    rows, columns = np.ogrid[:header.Rows, :header.Columns]
    return (((rows - 200) ** 2 + (columns - 310) ** 2) < 120 ** 2).astype(np.uint8) * 255


def _read(data: bytes):
    return pydicom.dcmread(io.BytesIO(data))


def dciodvfy_errors(data: bytes, tmp_path) -> list[str]:
    """dciodvfy's error lines for one Part 10 object (warnings allowed)."""
    binary = shutil.which("dciodvfy")
    assert binary, "dciodvfy missing: apt-get install -y dicom3tools (bash run.sh test installs it)"
    path = tmp_path / "object.dcm"
    path.write_bytes(data)
    run = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_every_object_passes_dciodvfy(source, mask, tmp_path):
    objects = result_objects(source_header(source), FINDINGS, pdf=PDF, mask=mask, model_version="test-1",
                             threshold=0.0215)
    assert [_read(o).Modality for o in objects] == ["DOC", "SEG", "SR"]
    for data in objects:
        assert dciodvfy_errors(data, tmp_path) == []
    # the check itself finds errors: the source's YBR_FULL JPEG is one dciodvfy objects to
    assert dciodvfy_errors(source, tmp_path)


def test_pdf_bytes_and_the_source_reference(source):
    header = source_header(source)
    ds = encapsulated_pdf(header, PDF, "test-1", 0.0215)
    stored = _read(part10_bytes(ds))
    assert len(PDF) % 2 == 1 and len(stored.EncapsulatedDocument) == len(PDF) + 1
    assert stored.EncapsulatedDocument[:stored.EncapsulatedDocumentLength] == PDF
    assert stored.SourceInstanceSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert (stored.StudyInstanceUID, stored.PatientID, stored.PatientSex, stored.PatientAge) == \
        (header.StudyInstanceUID, "RES-1", "F", "061Y")
    assert stored.SeriesInstanceUID != header.SeriesInstanceUID


def test_segmentation_pixels_equal_the_mask_at_source_size(source, mask):
    header = source_header(source)
    seg = hd.seg.segread(io.BytesIO(part10_bytes(lesion_segmentation(header, mask, "test-1"))))
    pixels = seg.get_pixels_by_source_instance([header.SOPInstanceUID], combine_segments=True)[0]
    assert pixels.shape == (header.Rows, header.Columns)
    assert np.array_equal(pixels > 0, mask > 0)
    assert seg.get_source_image_uids() == [(header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID)]


def test_sr_states_the_findings(source):
    header = source_header(source)
    sr = hd.sr.srread(io.BytesIO(part10_bytes(findings_report(header, FINDINGS))))
    report = hd.sr.MeasurementReport.from_sequence([sr])
    group = report.get_image_measurement_groups()[0]
    values = {m.name: m.value for m in group.get_measurements()}
    for code in CLASS_CODES:
        assert values[hd.sr.CodedConcept.from_code(PROBABILITY[code])] == pytest.approx(PROBS[code], abs=1e-9)
    assert values[hd.sr.CodedConcept.from_code(REFERRAL_THRESHOLD)] == pytest.approx(0.0215)
    evaluations = {e.name: e.value for e in group.get_qualitative_evaluations()}
    assert evaluations[hd.sr.CodedConcept.from_code(REFERRAL)] == REFERRAL_VALUES[True]
    assert evaluations[hd.sr.CodedConcept.from_code(UNCERTAINTY)] == UNCERTAINTY_VALUES["moderate"]
    assert evaluations[hd.sr.CodedConcept.from_code(MOST_PROBABLE)].meaning == "Melanocytic nevus"
    version = hd.sr.utils.find_content_items(group[0], name=codes.DCM.AlgorithmVersion, recursive=True)
    assert [item.value for item in version] == ["test-1"]
    assert [i.referenced_sop_instance_uid for i in group.source_images] == [header.SOPInstanceUID]


def test_uids_depend_on_source_version_kind_and_threshold(source, mask, data_dir):
    header = source_header(source)
    build = lambda version, threshold, pdf=PDF: [_read(o).SOPInstanceUID for o in result_objects(  # noqa: E731
        header, Findings(**{**FINDINGS.__dict__, "model_version": version, "referral_threshold": threshold}),
        pdf=pdf, mask=mask, model_version=version, threshold=threshold)]
    first = build("test-1", 0.0215)
    assert len(set(first)) == 3
    assert build("test-1", 0.0215, pdf=PDF + b"\n% another build") == first   # same analysis: same instances
    assert build("test-2", 0.0215)[1] != first[1]                             # another model: a new mask
    threshold = build("test-1", 0.3)
    assert threshold[1] == first[1] and threshold[0] != first[0] and threshold[2] != first[2]
    other = source_header(wrap_jpeg(sorted((data_dir / "ham10000" / "fullres" / "images").glob("ISIC_*.jpg"))[0]
                                    .read_bytes(), MadeUpPatient("RES-1", study_uid=header.StudyInstanceUID)))
    assert set(_read(o).SOPInstanceUID for o in result_objects(other, FINDINGS, pdf=PDF, mask=mask,
                                                               model_version="test-1", threshold=0.0215)).isdisjoint(first)


def test_refused_image_gets_the_pdf_only(source):
    objects = result_objects(source_header(source), None, pdf=PDF, mask=None, model_version="test-1", threshold=None)
    assert [_read(o).Modality for o in objects] == ["DOC"]


@pytest.mark.parametrize("change, message", [
    ({"probabilities": {**PROBS, "mel": 0.9}}, "sum to 1"),
    ({"probabilities": {c: p for c, p in PROBS.items() if c != "df"}}, "probability for each"),
    ({"label": "mel"}, "not the most probable"),
    ({"uncertainty_level": "huge"}, "uncertainty level"),
    ({"image_check": "not_skin"}, "no findings"),
    ({"referral_threshold": 1.5}, r"\[0, 1\]"),
    ({"model_version": ""}, "model version"),
])
def test_findings_refuse_what_is_not_a_finding(change, message):
    with pytest.raises(DicomResultError, match=message):
        Findings(**{**FINDINGS.__dict__, **change})


def test_constructors_refuse_what_they_cannot_build(source, mask):
    header = source_header(source)
    with pytest.raises(DicomResultError, match="must match its image"):
        lesion_segmentation(header, mask[:-1], "test-1")
    with pytest.raises(DicomResultError, match="not a PDF"):
        encapsulated_pdf(header, b"<html>", "test-1", None)
    with pytest.raises(DicomResultError, match="go together"):
        result_objects(header, FINDINGS, pdf=PDF, mask=None, model_version="test-1", threshold=0.0215)
    with pytest.raises(DicomResultError, match="another model"):
        result_objects(header, FINDINGS, pdf=PDF, mask=mask, model_version="test-2", threshold=0.0215)
    with pytest.raises(DicomResultError, match="photographic"):
        source_header(part10_bytes(lesion_segmentation(header, mask, "test-1")))
    ds = _read(source)
    ds.NumberOfFrames = 2
    with pytest.raises(DicomResultError, match="multi-frame"):
        source_header(part10_bytes(ds))
