"""core.reports.report: PDF content, privacy (no EXIF, no file names) and determinism."""
from __future__ import annotations

import io
import re
import hashlib
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image

from pdf_support import streams

from core.data.classes import CLASS_CODES
from core.lesion.lesion_measurements import describe_measurements, measure_lesion
from core.decisions.referral import BELOW_TEXT, REFER_TEXT
from core.reports.report import DISCLAIMER, REPORT_TITLE, ascii_safe, build_pdf_report, image_id

WHEN = datetime(2025, 3, 14, 9, 26, 53, tzinfo=timezone.utc)
SECRET_NAME = "jane_doe_1961-04-02_IMG_4711.jpg"


def text_pieces(pdf: bytes) -> list[str]:
    """The text of each ``(...) Tj`` operator (one line of a cell), in drawing order."""
    parts = []
    for s in streams(pdf):
        for m in re.finditer(rb"\(((?:\\.|[^\\)])*)\)\s*Tj", s):
            parts.append(re.sub(rb"\\(.)", rb"\1", m.group(1)).decode("latin-1"))
    return parts


def pdf_text(pdf: bytes) -> str:
    """Concatenated text of all ``(...) Tj`` operators, separated by spaces."""
    return re.sub(r"\s+", " ", " ".join(text_pieces(pdf)))


def png_unfilter(data: bytes, stride: int, bpp: int) -> np.ndarray:
    """Undo PNG row filters (PDF /Predictor 15) -> rows x stride uint8."""
    rows = len(data) // (stride + 1)
    out = np.zeros((rows, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for r in range(rows):
        kind = data[r * (stride + 1)]
        line = np.frombuffer(data, np.uint8, stride, r * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, np.int32)
        for i in range(stride):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[i] = (line[i] + pred) & 0xFF
        out[r] = cur
        prev = cur
    return out.astype(np.uint8)


def everything(pdf: bytes) -> bytes:
    return pdf + b"".join(streams(pdf))


def lesion_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = np.empty((150, 200, 3), np.uint8)
    rgb[:] = (225, 175, 160)
    yy, xx = np.mgrid[:150, :200]
    mask = ((yy - 75) ** 2 / 45**2 + (xx - 100) ** 2 / 60**2) <= 1
    rgb[mask] = (110, 60, 40)
    rgb = np.clip(rgb.astype(int) + rng.integers(-8, 9, rgb.shape), 0, 255).astype(np.uint8)
    return rgb, mask.astype(np.uint8) * 255


def exif_jpeg_image() -> Image.Image:
    """A JPEG decoded from bytes that carry EXIF (description = a patient file name, artist, GPS-ish text)."""
    rgb, _ = lesion_image(1)
    exif = Image.Exif()
    exif[0x010E] = SECRET_NAME  # ImageDescription
    exif[0x013B] = "Dr Secret Exifauthor"  # Artist
    exif[0x010F] = "SecretCam Inc"  # Make
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", exif=exif.tobytes(), quality=90)
    data = buf.getvalue()
    assert b"Exif" in data and SECRET_NAME.encode() in data  # the source really has EXIF
    img = Image.open(io.BytesIO(data))
    assert "exif" in img.info
    return img


def make_report(**overrides) -> bytes:
    rgb, mask = lesion_image()
    probs = {"akiec": 0.02, "bcc": 0.03, "bkl": 0.05, "df": 0.01, "mel": 0.71, "nv": 0.16, "vasc": 0.02}
    kwargs = dict(
        image_rgb=rgb,
        overlay_rgb=rgb // 2,
        cam_rgb=rgb[::-1].copy(),
        probs=probs,
        label="mel",
        uncertainty_text="Uncertainty moderate. On validation images, the top prediction at this level was wrong 23% "
                         "of the time.",
        referral={"text": REFER_TEXT, "numbers": "Melanoma score 0.710; referral threshold 0.021",
                  "threshold_note": "the model card's threshold, chosen on validation images"},
        similar_cases=[("ISIC_0024306", "Melanoma (mel)", "histopathology", 0.93),
                       ("ISIC_0012345", "Melanocytic nevus (nv)", "ISIC 2017 challenge label", 0.91)],
        measurements=measure_lesion(mask, rgb, mm_per_pixel=0.05),
        model_info={"version": "2025.03-rc1", "created": "2025-03-01T12:00:00Z",
                    "metrics": {"balanced_accuracy": 0.812, "mask_cn": {"macro_auc": 0.951}}},
        generated_at=WHEN,
    )
    kwargs.update(overrides)
    return build_pdf_report(**kwargs)


def test_pdf_basics_and_content():
    pdf = make_report()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 1  # fits on one A4 page
    text = pdf_text(pdf)
    assert REPORT_TITLE in text
    assert "2025-03-14 09:26 UTC" in text
    assert "2025.03-rc1" in text
    assert DISCLAIMER in text
    assert "Decision support for trained professionals; not a diagnosis." in text
    assert "Most likely: Melanoma (mel) 71.0 % - malignant class" in text
    # all seven classes with full names and probabilities
    for name in ("Actinic keratosis / intraepithelial carcinoma", "Basal cell carcinoma",
                 "Benign keratosis-like lesion", "Dermatofibroma", "Melanocytic nevus", "Vascular lesion"):
        assert name in text, name
    assert "Melanoma (top class)" in text
    assert "16.0 %" in text
    assert f"Melanoma referral: {REFER_TEXT}" in text
    assert "Melanoma score 0.710; referral threshold 0.021 (the model card's threshold, chosen on validation images)." in text
    assert "Uncertainty moderate. On validation images, the top prediction at this level was wrong 23% of the time." in text
    assert "ISIC_0024306 Melanoma (mel) histopathology 0.93" in text and "ISIC 2017 challenge label 0.91" in text
    assert "benign" not in text.lower().replace("benign keratosis", "")
    # every measurement row in the shared wording (core.lesion.lesion_measurements.describe_measurements), with mm values
    rgb, mask = lesion_image()
    measurements = measure_lesion(mask, rgb, mm_per_pixel=0.05)
    for key, value in describe_measurements(measurements):
        assert f"{key} {ascii_safe(value)}" in text, (key, value)
    assert f"{measurements['max_diameter_mm']:,.1f} mm" in text
    assert f"{measurements['asymmetry']:.0%} of the lesion area does not overlap its mirror image" in text
    assert "balanced_accuracy" in text and "0.812" in text and "mask_cn / macro_auc" in text
    assert "Unusual image" not in text and "No diagnosis" not in text and "Patient context" not in text


def test_top_class_row_is_highlighted():
    pdf = make_report()
    content = b"".join(s for s in streams(pdf) if b"Tj" in s).decode("latin-1")
    # the fill colour set right before the top row is the highlight colour; other rows are stroked only
    top_row = content.index("(Melanoma  \\(top class\\)) Tj")
    assert "re B" in content[content.rfind("q ", 0, top_row):top_row]
    nv_row = content.index("(Melanocytic nevus) Tj")
    assert "re S" in content[content.rfind("q ", 0, nv_row):nv_row]


def test_unusual_warning_and_sanitised_reason():
    pdf = make_report(ood_level="unusual", ood_reason="Unlike the training images \u2013 feature distance 11.5 \u2265 9.7.")
    text = pdf_text(pdf)
    assert "Unusual image: Unlike the training images - feature distance 11.5 >= 9.7." in text
    assert "Most likely: Melanoma (mel) 71.0 %" in text  # still shown (the screens grey it)
    assert ".." not in text


@pytest.mark.parametrize("level", ["clinical_photo", "not_skin"])
def test_a_refused_image_shows_its_own_verdict_and_the_reason_only(level):
    """A refused image is not a benign one: the PDF says so, with or without the verdict text handed in."""
    reason = "This looks like a clinical (camera) photo, not a dermoscopy image."
    pdf = make_report(ood_level=level, ood_reason=reason)
    text = pdf_text(pdf)
    assert "No diagnosis" in text and reason in text
    assert "No automated assessment: review this lesion yourself." in text and "says nothing about the lesion" in text
    for absent in ("Most likely", "Melanoma referral", "Uncertainty", "Similar confirmed cases", "Lesion measurements",
                   "Melanocytic nevus", "Lesion segmentation"):
        assert absent not in text, absent
    assert pdf.count(b"/Subtype /Image") == 1  # the image itself: no overlay, no CAM


def test_session_threshold_and_patient_context_are_stated():
    referral = {"text": BELOW_TEXT, "numbers": "Melanoma score 0.710; referral threshold 0.800",
                "threshold_note": "your session's threshold 0.800; the model card's is 0.021"}
    context = [("Age", "54 years"), ("Sex", "female"), ("Anatomical site", "back")]
    text = pdf_text(make_report(referral=referral, patient_context=context,
                                context_note="The shipped model does not use patient context."))
    assert f"Melanoma referral: {BELOW_TEXT}" in text
    assert "referral threshold 0.800 (your session's threshold 0.800; the model card's is 0.021)" in text
    assert "Patient context" in text and "Age 54 years" in text and "Anatomical site back" in text
    assert "The shipped model does not use patient context." in text


def test_cam_caption_is_printed_under_the_map():
    caption = "Grad-CAM++ \u00b7 target Melanoma (mel) \u00b7 lesion mask applied"
    text = pdf_text(make_report(cam_caption=caption))
    assert "Grad-CAM++ - target Melanoma (mel) - lesion mask applied" in text
    assert "Class activation map" not in text


def test_no_exif_and_no_file_name():
    src = exif_jpeg_image()
    pdf = make_report(image_rgb=src, overlay_rgb=np.asarray(src), cam_rgb=None)
    blob = everything(pdf)
    assert b"Exif" not in blob and b"EXIF" not in blob
    assert SECRET_NAME.encode() not in blob and b"jane_doe" not in blob
    assert b"Exifauthor" not in blob and b"SecretCam" not in blob
    assert b".jpg" not in blob.lower()
    # control: the search does find a file name when the clinician writes one in the note
    noted = make_report(clinician_note=f"Compared with {SECRET_NAME} from last visit.")
    assert SECRET_NAME in pdf_text(noted)


def test_images_are_embedded_from_pixels():
    pdf = make_report(cam_rgb=None)
    assert pdf.count(b"/Subtype /Image") == 2
    assert b"/Filter /FlateDecode" in pdf
    assert b"/DCTDecode" not in pdf  # lossless re-encode, never the uploaded JPEG stream
    assert re.search(rb"/Width 200\b", pdf) and re.search(rb"/Height 150\b", pdf)
    rgb, _ = lesion_image()
    h, w = rgb.shape[:2]
    decoded = [png_unfilter(s, w * 3, 3) for s in streams(pdf) if len(s) == h * (1 + w * 3)]
    assert any(np.array_equal(d.reshape(h, w, 3), rgb) for d in decoded)  # the exact pixels, losslessly


def test_deterministic_bytes():
    a, b = make_report(), make_report()
    assert a == b
    assert b"D:20250314092653" in a
    later = make_report(generated_at=WHEN + timedelta(minutes=1))
    assert later != a
    naive = make_report(generated_at=WHEN.replace(tzinfo=None))
    assert naive == a  # naive datetimes are taken as UTC


def test_non_latin_text_is_sanitised():
    note = "Naevus \u2013 5\u00b5m \u2265 4 \u201cq\u201d caf\u00e9 \u2713 \u65e5\u672c"
    pdf = make_report(clinician_note=note, model_info={"version": "v\u00e9rsion-\u03b1", "created": "\u2014"})
    text = pdf_text(pdf)
    assert 'Naevus - 5um >= 4 "q" cafe ? ??' in text
    assert "version-?" in text
    assert ascii_safe("a\u00a0b\tc") == "a b c"


def test_empty_measurements_and_missing_probs():
    pdf = make_report(measurements=measure_lesion(np.zeros((10, 10), np.uint8)), probs={"nv": 1.0}, label="nv")
    text = pdf_text(pdf)
    assert "Lesion no lesion found in the mask: nothing to measure" in text
    assert "Melanocytic nevus (top class)" in text
    assert len(re.findall(r"(?<![\d.])0\.0 %", text)) == len(CLASS_CODES) - 1
    assert "100.0 %" in text


def test_float_and_grey_images_accepted():
    rgb, _ = lesion_image()
    pdf = make_report(image_rgb=rgb.astype(np.float32) / 255.0, overlay_rgb=rgb[:, :, 0], cam_rgb=None)
    assert pdf.startswith(b"%PDF")
    with pytest.raises(ValueError):
        make_report(image_rgb=np.zeros((4, 4, 2), np.uint8))


def test_the_report_can_be_filed_without_a_file_name():
    """Image ID (content hash), exam date and lesion label head the report: a dermatologist can file it with the
    patient's record although the file name (which may name the patient) is never printed."""
    data = SECRET_NAME.encode() + b" image bytes"
    assert image_id(data) == hashlib.sha256(data).hexdigest()[:12]  # the start of the audit log's image_sha256
    text = pdf_text(make_report(image_id=image_id(data), exam_date=date(2025, 1, 10), lesion_label="L2 left shoulder"))
    assert f"Image ID {image_id(data)} (file SHA-256) | Exam date 2025-01-10 | Lesion L2 left shoulder" in text
    assert "jane_doe" not in text
    # without a DICOM study date the exam is the analysis itself
    unlabelled = pdf_text(make_report())
    assert "Image ID not given | Exam date 2025-03-14 (this analysis) | Lesion not labelled" in unlabelled


def test_triage_verdict_and_melanoma_figures_are_one_statement():
    """The verdict already says whether the melanoma rule fired: the referral sentence is not repeated under it, the
    score and threshold sit in the verdict's box."""
    verdict = "Refer. Melanoma 71.0% reaches its referral threshold 2.1%."
    pieces = text_pieces(make_report(verdict=verdict))
    text = " ".join(pieces)
    assert f"Triage: {verdict}" in text
    assert "Melanoma referral" not in text and REFER_TEXT not in text
    numbers = "Melanoma score 0.710; referral threshold 0.021 (the model card's threshold, chosen on validation images)."
    assert text.count("Melanoma score 0.710") == 1 and numbers in text
    assert pieces.index(numbers) == pieces.index(f"Triage: {verdict}") + 1  # right under the verdict


def test_long_table_keys_wrap_inside_their_cell():
    """A figure's name wider than the key column ("ISIC 2017 val: Seborrhoeic keratosis AUC") wraps within it
    instead of running over its value."""
    from fpdf import FPDF

    key = "ISIC 2017 val: Seborrhoeic keratosis AUC"
    pieces = text_pieces(make_report(model_info={"version": "v1", "created": "2025-03-01",
                                                 "metrics": {key: 0.871}}))
    ruler = FPDF()
    ruler.set_font("Helvetica", "B", 9)
    assert ruler.get_string_width(key) > 60.0 - 2 * ruler.c_margin  # the key would not fit on one line
    start = next(i for i, p in enumerate(pieces) if key.startswith(p.strip()) and p.strip())
    lines = []
    while " ".join(lines) != key:
        lines.append(pieces[start + len(lines)].strip())
        assert len(lines) <= 3, lines
    assert len(lines) > 1 and all(ruler.get_string_width(line) <= 60.0 - 2 * ruler.c_margin for line in lines)
    assert pieces[start + len(lines)] == "0.871"  # the value follows, in its own cell
