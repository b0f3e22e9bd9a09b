"""DICOM intake (core.io.dicom_input via core.io.intake.load_image, and core.analysis.predict): real HAM10000 JPEGs wrapped as
DICOM Dermoscopic Photography images with made-up patients.

Checked: the pixels equal the JPEG's own decode (JPEG baseline, and uncompressed RGB / YBR_FULL re-encodings); the
patient context read back equals what was written (PatientAge, or birth date + study date; sex; site from the
anatomic region code or BodyPartExamined; unmapped site -> empty with a note); every frame of a multi-frame object;
identifiers only on request; core.analysis.predict fills age / sex / site from the tags and gives a damaged DICOM an error
row; hostile files (truncated, wrong transfer syntax, 0x0, a CT, a DICOMDIR, a PDF, huge declared sizes,
monochrome) raise ImageRejected with a sentence, never another exception.
"""
from __future__ import annotations

import csv
import io

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from core.io.dicom_input import DicomRejected, MadeUpPatient, read_dicom, wrap_jpeg
from core.io.intake import ImageRejected, load_frames, load_image
from core.data.patient_context import PatientContext

PATIENT = MadeUpPatient("TEST-1", name="Test^Made^Up", age=45, sex="female", site="lower extremity")


@pytest.fixture(scope="module")
def jpeg(data_dir) -> bytes:
    return sorted((data_dir / "ham10000" / "fullres" / "images").glob("ISIC_*.jpg"))[0].read_bytes()


@pytest.fixture(scope="module")
def dicom(jpeg) -> bytes:
    return wrap_jpeg(jpeg, PATIENT)


def _edit(data: bytes, change) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    change(ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _uncompressed(data: bytes, rgb: np.ndarray, interpretation: str, frames: int = 1) -> bytes:
    def change(ds):
        pixels = rgb
        if interpretation == "YBR_FULL":
            from pydicom.pixels import convert_color_space
            pixels = convert_color_space(rgb, "RGB", "YBR_FULL")
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PhotometricInterpretation = interpretation
        ds.PixelData = np.ascontiguousarray(np.stack([pixels] * frames)).tobytes()
        ds["PixelData"].VR = "OB"
        if frames > 1:
            ds.NumberOfFrames = frames
    return _edit(data, change)


def test_pixels_and_context_round_trip(jpeg, dicom):
    image = read_dicom(dicom)
    assert len(image.frames) == 1
    assert np.array_equal(image.frames[0], load_image(jpeg))
    assert image.context == PatientContext(age=45, sex="female", site="lower extremity")
    assert image.notes == []
    assert image.identifiers == {}  # nothing identifying unless asked
    assert np.array_equal(load_image(dicom, "x.dcm"), load_image(jpeg))  # the one intake path takes DICOM too


def test_identifiers_only_on_request(dicom):
    image = read_dicom(dicom, include_identifiers=True)
    assert image.identifiers["PatientName"] == "Test^Made^Up" and image.identifiers["PatientID"] == "TEST-1"
    assert "Test" not in repr(read_dicom(dicom))


@pytest.mark.parametrize("interpretation", ["RGB", "YBR_FULL"])
def test_uncompressed_colour_models(jpeg, dicom, interpretation):
    rgb = load_image(jpeg)
    frame = read_dicom(_uncompressed(dicom, rgb, interpretation)).frames[0]
    tolerance = 0 if interpretation == "RGB" else 2  # YBR <-> RGB rounding
    assert np.abs(frame.astype(int) - rgb).max() <= tolerance


def test_multi_frame_gives_every_frame(jpeg, dicom):
    rgb = load_image(jpeg)
    image = read_dicom(_uncompressed(dicom, rgb, "RGB", frames=3))
    assert len(image.frames) == 3 and all(np.array_equal(f, rgb) for f in image.frames)


def test_load_frames_gives_a_files_images_and_its_tags_context(jpeg, dicom):
    """The one 'every image of a file' entry of the Batch page and the predict CLI."""
    rgb = load_image(jpeg)
    frames, context = load_frames(_uncompressed(dicom, rgb, "RGB", frames=2), "two.dcm")
    assert len(frames) == 2 and all(np.array_equal(f, rgb) for f in frames)
    assert context == read_dicom(dicom).context and context.given
    frames, context = load_frames(jpeg, "plain.jpg")
    assert len(frames) == 1 and np.array_equal(frames[0], rgb) and context == PatientContext()
    with pytest.raises(ImageRejected):
        load_frames(b"", "empty.dcm")


def test_age_from_birth_and_study_date_and_code_only_site(dicom):
    def change(ds):
        del ds.PatientAge
        del ds.BodyPartExamined
        ds.PatientBirthDate, ds.StudyDate = "19800615", "20260614"
        ds.AnatomicRegionSequence[0].CodeValue = "77568009"  # SNOMED CT: back
        ds.AnatomicRegionSequence[0].CodeMeaning = "Back"
        ds.PatientSex = "M"
    assert read_dicom(_edit(dicom, change)).context == PatientContext(age=45, sex="male", site="back")


def test_unmapped_site_is_empty_with_a_note(dicom):
    def change(ds):
        del ds.AnatomicRegionSequence
        ds.BodyPartExamined = "TONGUE"
        ds.PatientSex = "O"
    image = read_dicom(_edit(dicom, change))
    assert image.context.site is None and image.context.sex is None
    assert any("TONGUE" in note for note in image.notes)


def _ct(ds):
    ds.Modality, ds.SOPClassUID = "CT", "1.2.840.10008.5.1.4.1.1.2"


def _dicomdir(ds):
    for keyword in ("PixelData", "SOPClassUID", "SOPInstanceUID"):
        del ds[keyword]
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.DirectoryRecordSequence = []


def _pdf(ds):
    del ds.PixelData
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"


def _zero(ds):
    ds.Rows = ds.Columns = 0


def _huge(ds):
    ds.Rows = ds.Columns = 60000


def _many_frames(ds):
    ds.NumberOfFrames = 100000


def _mono(ds):
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"


def _wrong_syntax(ds):
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # JPEG bytes declared as raw pixels


def _jpeg2000_declared(ds):
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # a decoder we do not have


@pytest.mark.parametrize("change, reason", [
    (_ct, "not_photo"), (_dicomdir, "dicomdir"), (_pdf, "not_image"), (_zero, "too_small"),
    (_huge, "too_many_pixels"), (_many_frames, "too_many_pixels"), (_mono, "unsupported_mode"),
    (_wrong_syntax, "damaged"), (_jpeg2000_declared, "unsupported_format")])
def test_hostile_dicoms_are_rejected_in_words(dicom, change, reason):
    with pytest.raises(ImageRejected) as caught:
        load_image(_edit(dicom, change), "hostile.dcm")
    assert caught.value.reason == reason
    assert caught.value.name == "hostile.dcm" and str(caught.value)[0].isupper()


@pytest.mark.parametrize("cut", [200, 1000, 5000, -100])
def test_truncated_dicoms_are_rejected(dicom, cut):
    with pytest.raises(DicomRejected):
        load_image(dicom[:cut])


def test_predict_fills_context_from_tags(tmp_path, dicom, repo_root):
    from core.analysis.predict import main
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "lesion.dcm").write_bytes(dicom)
    (tmp_path / "in" / "broken.dcm").write_bytes(dicom[:3000])
    two = pydicom.dcmread(io.BytesIO(dicom))  # a two-frame object: frame 2 is frame 1 mirrored
    first = load_image(dicom)
    two.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    two.PhotometricInterpretation, two.PlanarConfiguration = "RGB", 0
    two.PixelData = np.ascontiguousarray(np.stack([first, first[:, ::-1]])).tobytes()
    two["PixelData"].VR = "OB"
    two.NumberOfFrames = 2
    two.save_as(tmp_path / "in" / "two.dcm", enforce_file_format=True)
    assert main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--weights", str(repo_root / "weights")]) == 0
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        rows = {row["image"]: row for row in csv.DictReader(handle)}
    # one row and one mask per frame, each the analysis of that frame, with the tags' context
    assert "two" not in rows and rows["two_frame1"]["p_nv"] == rows["lesion"]["p_nv"]
    assert rows["two_frame2"]["age"] == "45" and not rows["two_frame2"]["error"]
    masks = [cv2.imread(str(tmp_path / "out" / "masks" / f"two_frame{k}.png"), cv2.IMREAD_GRAYSCALE) for k in (1, 2)]
    assert masks[0] is not None and masks[1] is not None and not np.array_equal(masks[0], masks[1])
    assert (rows["lesion"]["age"], rows["lesion"]["sex"], rows["lesion"]["site"]) == ("45", "female", "lower extremity")
    assert rows["lesion"]["error"] == "" and rows["lesion"]["model_version"]
    assert rows["broken"]["error"] and rows["broken"]["pred"] == ""
    assert "Test" not in (tmp_path / "out" / "predictions.csv").read_text()


def test_pixel_spacing_visit_date_and_lesion_tags(data_dir):
    """What a lesion history reads from the tags: millimetres per pixel (square PixelSpacing only), the visit date
    and which lesion it is (site, laterality, series description)."""
    jpeg = sorted((data_dir / "ham10000" / "images").glob("*.jpg"))[0].read_bytes()
    patient = MadeUpPatient("P1", site="back", study_date="20250310", laterality="L", series_description="Mole A",
                            mm_per_pixel=0.04)
    image = read_dicom(wrap_jpeg(jpeg, patient))
    assert image.mm_per_pixel == pytest.approx(0.04) and str(image.taken) == "2025-03-10"
    assert image.lesion == {"site": "back", "laterality": "left", "series": "Mole A"}
    ds = pydicom.dcmread(io.BytesIO(wrap_jpeg(jpeg, patient)))
    ds.PixelSpacing = [0.04, 0.05]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    skewed = read_dicom(out.getvalue())
    assert skewed.mm_per_pixel is None and any("not square" in note for note in skewed.notes)
    plain = read_dicom(wrap_jpeg(jpeg, MadeUpPatient("P2")))
    assert plain.mm_per_pixel is None and plain.lesion == {}


def test_the_header_count_and_the_reader_agree_on_a_multi_frame_file(jpeg, dicom, tmp_path):
    """file_header (what the predict CLI and the archive engine count) and read_dicom apply one size rule: with a
    total between one frame's limit and 8x it, the header used to say one image while the reader gave every frame,
    so only the first frame was analysed, silently."""
    from core.io.dicom_input import file_header

    rgb = load_image(jpeg)
    data = _uncompressed(dicom, rgb, "RGB", frames=4)
    path = tmp_path / "four.dcm"
    path.write_bytes(data)
    per_frame = rgb.shape[0] * rgb.shape[1]
    for limit in (per_frame, 2 * per_frame, 4 * per_frame, 8 * per_frame):
        count = file_header(path, max_pixels=limit)[0]
        try:
            frames = len(read_dicom(data, max_pixels=limit).frames)
        except ImageRejected as exc:
            assert exc.reason == "too_many_pixels" and count == 1, limit
        else:
            assert count == frames == 4, limit
