"""Privacy of the whole analysis path: upload bytes -> load_image -> Analyzer.analyze(cam=True) (+ cam_for, as the
Analyze page does) -> PDF report.

1. Nothing is written to disk (tests/test_privacy.assert_no_disk_writes: audit hook + before/after listings +
   a private, must-stay-empty tempdir).
2. The PDF carries nothing from the upload's metadata: the source is a real HAM10000 JPEG re-saved in memory with
   an EXIF block (camera make/model, artist, description, GPS) and given an identifying file name; neither the
   EXIF marker, any EXIF string nor the file name may appear in the PDF, in its raw bytes or inside any of its
   (Flate-)compressed streams. A clinician note passed on purpose must be found (proof that the search looks
   inside the compressed content).
3. Logs never contain image data: with every logger opened up to DEBUG (the most talkative configuration anyone
   could run the app with) and stdout/stderr captured at the file-descriptor level, the whole path (plus two
   rejected uploads) must not emit any of the upload's bytes (raw repr, hex or base64), a pixel-array dump, the
   EXIF text or the content of a rejected file.
"""
from __future__ import annotations

import base64
import io
import logging
import re
import warnings
from datetime import datetime, timezone

import pytest
from PIL import ExifTags, Image

from core.analysis.cam import overlay_heatmap, overlay_mask
from core.analysis.inference import Analyzer
from core.io.intake import ImageRejected, load_image
from core.reports.report import build_pdf_report
from tests.pdf_support import streams
from tests.test_privacy import assert_no_disk_writes

FILE_NAME = "Doe_Jane_DOB-1961-07-04_MRN-884213_left-shoulder.jpg"
EXIF_TEXT = {
    ExifTags.Base.Make: "LeakyCamCorp",
    ExifTags.Base.Model: "PrivacyProbe-9000",
    ExifTags.Base.Artist: "Dr Ima Photographer",
    ExifTags.Base.ImageDescription: "Patient Jane Doe MRN 884213",
    ExifTags.Base.Copyright: "St Elsewhere Clinic",
    ExifTags.Base.Software: "ExifLeakTest 1.0",
}
CONTROL_NOTE = "control-note-QX7731"


@pytest.fixture(scope="module")
def analyzer(repo_root):
    return Analyzer.load(repo_root / "weights")


@pytest.fixture(scope="module")
def upload(data_dir) -> bytes:
    """A real full-resolution HAM10000 JPEG re-encoded in memory with an identifying EXIF block."""
    source = sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[0]
    with Image.open(source) as img:
        rgb = img.convert("RGB")
    exif = Image.Exif()
    for tag, value in EXIF_TEXT.items():
        exif[tag] = value
    exif[ExifTags.Base.Orientation] = 1
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps.update({ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (51.0, 30.0, 26.0),
                ExifTags.GPS.GPSLongitudeRef: "W", ExifTags.GPS.GPSLongitude: (0.0, 7.0, 39.0)})
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=92, exif=exif)
    data = buffer.getvalue()
    # The fixture really carries what the test looks for.
    assert data[:2] == b"\xff\xd8" and b"Exif\x00\x00" in data[:64]
    for value in EXIF_TEXT.values():
        assert value.encode() in data
    with Image.open(io.BytesIO(data)) as check:
        read_back = check.getexif()
        assert read_back[ExifTags.Base.Make] == "LeakyCamCorp"
        assert read_back.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitudeRef] == "N"
    return data


def _analyse_and_report(analyzer: Analyzer, data: bytes, note: str = "") -> bytes:
    """What the Analyze page does with an upload, without Streamlit."""
    rgb = load_image(data, FILE_NAME)
    r = analyzer.analyze(rgb, cam=True)
    other = next(c for c in r.probs if c != r.label)
    other_cam = analyzer.cam_for(rgb, other, "Grad-CAM")  # the page's "target class" choice
    assert other_cam.shape == rgb.shape[:2]
    return build_pdf_report(
        image_rgb=rgb, overlay_rgb=overlay_mask(rgb, r.mask), cam_rgb=overlay_heatmap(rgb, r.cam),
        probs=r.probs, label=r.label, ood_level=r.ood_level, ood_reason=r.ood_reason,
        uncertainty_text=r.uncertainty_text, measurements=r.measurements,
        model_info={"version": analyzer.version, "created": analyzer.card.display("created")},
        generated_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), clinician_note=note,
    )


def _pdf_texts(pdf: bytes) -> list[bytes]:
    """The raw PDF plus every stream it holds, inflated where it is Flate-compressed."""
    return [pdf, *streams(pdf)]


def _encodings(text: str) -> list[bytes]:
    """How a string can be stored in a PDF: bytes, UTF-16BE (text strings) and their hex forms."""
    plain, utf16 = text.encode("latin-1", "replace"), text.encode("utf-16-be")
    return [plain, utf16, plain.hex().encode(), plain.hex().upper().encode(), utf16.hex().encode(),
            utf16.hex().upper().encode()]


def _found(texts: list[bytes], needle: str) -> bool:
    forms = _encodings(needle)
    return any(form in text for text in texts for form in forms)


def test_analysis_and_report_write_nothing(analyzer, upload, tmp_path):
    pdf = _analyse_and_report(analyzer, upload)  # warm-up: first CAM / PDF use imports and caches
    assert pdf[:5] == b"%PDF-"

    def handle_upload():
        assert _analyse_and_report(analyzer, upload)[:5] == b"%PDF-"

    assert_no_disk_writes(handle_upload, tmp_path / "tmp")


def test_pdf_carries_no_exif_or_file_name(analyzer, upload):
    pdf = _analyse_and_report(analyzer, upload, note=CONTROL_NOTE)
    assert pdf[:5] == b"%PDF-"
    texts = _pdf_texts(pdf)
    assert len(texts) > 2, "no streams found in the PDF"
    assert _found(texts, CONTROL_NOTE), "search does not reach the compressed page content"

    leaks = [needle for needle in (*EXIF_TEXT.values(), FILE_NAME, FILE_NAME.rsplit(".", 1)[0], "884213",
                                   "Doe_Jane")
             if _found(texts, needle)]
    assert not leaks, f"upload metadata / file name in the PDF: {leaks}"
    assert not any(b"Exif\x00\x00" in t for t in texts), "an EXIF block reached the PDF"
    assert not any(b"http://ns.adobe.com/xap" in t for t in texts[1:]), "XMP metadata reached the PDF images"
    # No image stream in the PDF is the uploaded JPEG (or any JPEG carrying an APP1 segment).
    assert upload[2:2000] not in pdf
    assert not any(t.startswith(b"\xff\xd8\xff\xe1") for t in texts), "a JPEG with an APP1 (EXIF) segment is embedded"



# ----------------------------------------------------------------------------------------------------------------
# logs
REJECTED_TEXT = b"Patient: Jane Doe, MRN 884213, lesion on the left shoulder, 6 mm, changing colour\n" * 4
# numpy repr/str of an image or nested pixel lists, or 32+ small integers in a row (a flattened pixel row)
ARRAY_DUMP = re.compile(r"array\(\[|\[\[\[?\s*\d{1,3}[\s,]+\d{1,3}|(?:\b\d{1,3}\b[\s,\[\]]+){31}\d{1,3}\b")


def _byte_forms(data: bytes, step: int = 64) -> list[str]:
    """Text forms a piece of `data` takes when someone logs it, for a window every `step` bytes: repr and hex (both
    cases) of 16 bytes, base64 of 12 bytes at each of the three alignments. Any logged run of >= ~100 bytes of the
    upload contains at least one window."""
    forms = []
    for start in range(2, len(data) - 20, step):
        piece = data[start:start + 16]
        if not any(c in piece for c in b"'\"\\"):  # repr quoting/escaping of these depends on the context
            forms.append(repr(piece)[2:-1])
        forms += [piece.hex(), piece.hex().upper()]
        forms += [base64.b64encode(data[start + i:start + i + 12]).decode() for i in range(3)]
    return forms


def _log_leaks(text: str, upload: bytes, rgb) -> list[str]:
    leaks = [f"upload bytes {form[:24]}..." for form in _byte_forms(upload) if form in text]
    leaks += [f"pixel row {i}" for i in (0, rgb.shape[0] // 2) if repr(rgb[i, :4].tolist())[1:-1] in text]
    leaks += [f"array dump: {m.group(0)[:60]}..." for m in ARRAY_DUMP.finditer(text)]
    leaks += [f"EXIF text {value!r}" for value in EXIF_TEXT.values() if value in text]
    leaks += ["rejected file content" for needle in ("Jane Doe", "884213") if needle in text]
    return leaks


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # message with its args, plus the traceback if any


def test_leak_detector_catches_logged_image_data(upload):
    """The detector itself: each way of logging image data is caught, a plain log line is not."""
    rgb = load_image(upload)
    piece = upload[5000:5100]
    assert _log_leaks(f"decoding {piece!r}", upload, rgb)
    assert _log_leaks(f"bytes {upload[3000:3100].hex()}", upload, rgb)
    assert _log_leaks("payload " + base64.b64encode(upload[7001:7200]).decode(), upload, rgb)
    assert _log_leaks(f"pixels {rgb[0].tolist()}", upload, rgb)
    assert _log_leaks(f"pixels {rgb[:2, :40]}", upload, rgb)  # numpy's own repr
    assert _log_leaks("description: Patient Jane Doe MRN 884213", upload, rgb)
    assert not _log_leaks("analysed image 600x450 in 0.31 s; label nv (p=0.83)", upload, rgb)


def test_logs_never_contain_image_data(analyzer, upload, capfd):
    root = logging.getLogger()
    saved = root.level, {name: lg.level for name, lg in logging.Logger.manager.loggerDict.items()
                         if isinstance(lg, logging.Logger)}
    handler = _Capture()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for lg in logging.Logger.manager.loggerDict.values():  # open every already-created logger up to DEBUG...
        if isinstance(lg, logging.Logger) and lg.level > logging.DEBUG and lg.name != "PIL":
            lg.setLevel(logging.DEBUG)  # ...except what core.io.intake deliberately caps (see core/io/intake.py)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # any warning would be printed to stderr and captured below
            logging.getLogger("lesionlens.test").debug("control line %s", CONTROL_NOTE)
            rgb = load_image(upload, FILE_NAME)
            pdf = _analyse_and_report(analyzer, upload)
            for bad in (REJECTED_TEXT, upload[: len(upload) // 2]):
                with pytest.raises(ImageRejected) as info:
                    load_image(bad, FILE_NAME)
                assert not _log_leaks(str(info.value), upload, rgb), str(info.value)
                assert "Jane" not in str(info.value)
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)
    out, err = capfd.readouterr()
    assert pdf[:5] == b"%PDF-"
    text = "\n".join(handler.lines) + "\n" + out + "\n" + err
    assert f"control line {CONTROL_NOTE}" in text, "the log capture does not work"
    leaks = _log_leaks(text, upload, rgb)
    assert not leaks, f"image data in the logs: {leaks}"
