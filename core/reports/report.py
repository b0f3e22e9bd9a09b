"""One-page (A4) PDF analysis report built with fpdf2.

Privacy and reproducibility rules:

* Images are re-encoded from their pixel arrays (PIL -> in-memory PNG without any ancillary chunks), so no
  EXIF / GPS / camera data, ICC profile text or file name from the upload reaches the PDF.
* No file name is written anywhere (the document title is fixed); only text the caller passes in
  (e.g. the clinician note, the lesion label) appears. The report is filed by a content hash of the image file
  (``image_id``: the start of the SHA-256 the audit log records), the exam date and the user's lesion label.
* Given ``generated_at`` the output bytes are deterministic: the PDF creation date and the file /ID
  (fpdf2 hashes the content and the date) depend on nothing else.
* Only the core Helvetica font is used; every string is reduced to printable ASCII first (core fonts are
  latin-1 only; typographic quotes, dashes, micro signs and accents are transliterated, the rest becomes '?').
"""
from __future__ import annotations

import hashlib
import io
import math
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone

import numpy as np
from fpdf import FPDF
from fpdf.enums import XPos, YPos
from PIL import Image

from core.data.classes import CLASS_BY_CODE, CLASSES
from core.imaging.preprocess import as_rgb_u8
from core.lesion.lesion_measurements import describe_measurements
from core.decisions.ood_levels import GREYED_HEADLINES, GREYED_LEVELS, REFUSED_LEVELS
from core.decisions.triage import HEADLINES, NOT_ASSESSED_NOTE, Verdict

__all__ = ["DISCLAIMER", "REPORT_TITLE", "build_pdf_report", "ascii_safe", "image_id"]

REPORT_TITLE = "LesionLens analysis report"
DISCLAIMER = (
    "Decision support for trained professionals; not a diagnosis. The result comes from a machine-learning "
    "model trained on public dermoscopy collections (the model card names them); it can be wrong, especially for "
    "images unlike its training data, for lesion types outside its seven classes, and for non-dermoscopic photographs. "
    "Every finding must be confirmed by clinical examination and, where indicated, histopathology."
)

_TRANSLIT = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u2026": "...", "\u00b5": "u", "\u03bc": "u", "\u00b2": "2", "\u00b3": "3", "\u00b0": " deg",
    "\u00d7": "x", "\u00b1": "+/-", "\u2264": "<=", "\u2265": ">=", "\u2248": "~", "\u2260": "!=",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2022": "-", "\u00b7": "-", "\u2192": "->",
    "\u03c0": "pi", "\u00df": "ss", "\u00e6": "ae", "\u00c6": "AE", "\u00f8": "o", "\u00d8": "O", "\u0153": "oe",
    "\t": " ",
}

_PAGE_W = 210.0
_MARGIN = 15.0
_CONTENT_W = _PAGE_W - 2 * _MARGIN
_HIGHLIGHT = (255, 236, 179)
_HEADER_FILL = (230, 230, 230)
_WARN_FILL = (255, 221, 221)


def ascii_safe(text: object) -> str:
    """Printable-ASCII version of ``text`` (newlines kept)."""
    s = "" if text is None else str(text)
    s = "".join(_TRANSLIT.get(ch, ch) for ch in s)
    s = unicodedata.normalize("NFKD", s)
    s = "".join(ch for ch in s if not unicodedata.combining(ch))
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch if (32 <= ord(ch) < 127 or ch == "\n") else "?" for ch in s)


def image_id(data: bytes) -> str:
    """The report's image ID: the first 12 hex digits of the file's SHA-256. It names the image without its file
    name (which may hold a patient's name) and matches the audit log's image_sha256, so a filed PDF can be traced."""
    return hashlib.sha256(data).hexdigest()[:12]


def _utc(when: datetime | None) -> datetime:
    """``when`` (default: now; naive = UTC) in UTC, to the second."""
    when = when or datetime.now(timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).replace(microsecond=0)


def _png(image) -> tuple[io.BytesIO, int, int]:
    """Re-encode an RGB array (or PIL image) as a bare PNG in memory; returns (buffer, width, height)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = as_rgb_u8(image)
    fresh = Image.fromarray(arr, mode="RGB")  # a new image: no info / exif / icc
    buf = io.BytesIO()
    fresh.save(buf, format="PNG", optimize=False, compress_level=0)  # fpdf re-compresses: level 6 only costs time
    buf.seek(0)
    return buf, arr.shape[1], arr.shape[0]


def _fmt_num(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ascii_safe(value)
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}"


def _fmt_metric(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _fmt_num(value, 3)
    return ascii_safe(value)


class _ReportPDF(FPDF):
    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", "I", 7)
        self.set_text_color(110, 110, 110)
        self.cell(0, 5, f"{self.title} - decision support, not a diagnosis - page {self.page_no()}", align="C")
        self.set_text_color(0, 0, 0)


def _heading(pdf: FPDF, text: str) -> None:
    pdf.ln(1)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 6.5, ascii_safe(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)


def _images(pdf: FPDF, panels: list[tuple[str, object]]) -> None:
    encoded = [(cap, *_png(img)) for cap, img in panels]
    gap = 4.0
    n = len(encoded)
    slot_w = (_CONTENT_W - gap * (n - 1)) / n
    max_h = 52.0
    heights = []
    widths = []
    for _, _, w, h in encoded:
        width = slot_w
        height = width * h / w
        if height > max_h:
            height = max_h
            width = height * w / h
        widths.append(width)
        heights.append(height)
    top = pdf.get_y()
    row_h = max(heights)
    if top + row_h + 12 > pdf.h - pdf.b_margin:
        pdf.add_page()
        top = pdf.get_y()
    pdf.set_font("Helvetica", "", 8)
    bottom = top + row_h
    for i, ((caption, buf, _, _), width, height) in enumerate(zip(encoded, widths, heights)):
        x0 = _MARGIN + i * (slot_w + gap)
        pdf.image(buf, x=x0 + (slot_w - width) / 2, y=top, w=width, h=height)
        pdf.set_xy(x0, top + row_h + 1)
        pdf.multi_cell(slot_w, 3.5, ascii_safe(caption), align="C")
        bottom = max(bottom, pdf.get_y())
    pdf.set_xy(_MARGIN, bottom + 2)


def _probability_table(pdf: FPDF, probs: Mapping[str, float], label: str) -> None:
    cols = [("Code", 18.0), ("Class", 100.0), ("Malignant", 24.0), ("Probability", 38.0)]
    pdf.set_font("Helvetica", "B", 9)
    pdf.set_fill_color(*_HEADER_FILL)
    for name, w in cols:
        pdf.cell(w, 6, name, border=1, fill=True, align="C" if name != "Class" else "L")
    pdf.ln(6)
    ordered = sorted(CLASSES, key=lambda c: (-float(probs.get(c.code, 0.0) or 0.0), c.code))
    for c in ordered:
        p = float(probs.get(c.code, 0.0) or 0.0)
        top = c.code == label
        pdf.set_font("Helvetica", "B" if top else "", 9)
        pdf.set_fill_color(*_HIGHLIGHT)
        values = [c.code, c.name + ("  (top class)" if top else ""), "yes" if c.malignant else "no",
                  f"{100.0 * p:.1f} %"]
        for (name, w), v in zip(cols, values):
            pdf.cell(w, 5, ascii_safe(v), border=1, fill=top, align="L" if name == "Class" else "C")
        pdf.ln(5)
    pdf.set_font("Helvetica", "", 9)


def _kv_table(pdf: FPDF, rows: list[tuple[str, str]], key_w: float = 60.0) -> None:
    """Two-column table; a long key or value wraps inside its own cell (a key like "ISIC 2017 val: Seborrhoeic
    keratosis AUC" is wider than its column and ran into the value) and the row grows to the taller of the two.
    Rows of 4.5 mm keep the analysis report, with its filing line, on one A4 page."""
    value_w = _CONTENT_W - key_w
    line_h = 4.5
    for key, value in rows:
        key, value = ascii_safe(key), ascii_safe(value)
        pdf.set_font("Helvetica", "B", 9)
        key_lines = len(pdf.multi_cell(key_w, line_h, key, dry_run=True, output="LINES"))
        pdf.set_font("Helvetica", "", 9)
        value_lines = len(pdf.multi_cell(value_w, line_h, value, dry_run=True, output="LINES"))
        row_h = line_h * max(key_lines, value_lines)
        if pdf.get_y() + row_h > pdf.page_break_trigger:
            pdf.add_page()
        top = pdf.get_y()
        pdf.set_font("Helvetica", "B", 9)
        # one border around the whole key cell; its text wraps inside it
        pdf.rect(_MARGIN, top, key_w, row_h)
        pdf.set_xy(_MARGIN, top)
        pdf.multi_cell(key_w, line_h, key, align="L")
        pdf.set_font("Helvetica", "", 9)
        pdf.rect(_MARGIN + key_w, top, value_w, row_h)
        pdf.set_xy(_MARGIN + key_w, top)
        pdf.multi_cell(value_w, line_h, value, align="L")
        pdf.set_xy(_MARGIN, top + row_h)


def _model_rows(info: Mapping) -> list[tuple[str, str]]:
    rows = [("Model version", ascii_safe(info.get("version", "unknown"))),
            ("Model created", ascii_safe(info.get("created", "unknown")))]
    metrics = info.get("metrics") if "metrics" in info else info.get("metrics_summary")
    if isinstance(metrics, Mapping):
        for key, value in metrics.items():
            if isinstance(value, Mapping):
                for sub, v in value.items():
                    if not isinstance(v, (Mapping, list, tuple)):
                        rows.append((f"{key} / {sub}", _fmt_metric(v)))
            elif not isinstance(value, (list, tuple)):
                rows.append((str(key), _fmt_metric(value)))
    elif metrics:
        rows.append(("Metrics", ascii_safe(metrics)))
    return rows


def start_document(title: str, generated_at: datetime | None, model_info: Mapping) -> FPDF:
    """An A4 report with ``title`` and the generation time and model version on its first page. ``generated_at``
    (default: now, UTC; naive = UTC) is printed and is the PDF creation date."""
    when = _utc(generated_at)
    pdf = _ReportPDF(orientation="P", unit="mm", format="A4")
    pdf.set_creation_date(when)
    pdf.set_title(title)
    pdf.set_author("LesionLens")
    pdf.set_creator("LesionLens")
    pdf.set_margins(_MARGIN, _MARGIN, _MARGIN)
    pdf.set_auto_page_break(auto=True, margin=16)
    pdf.add_page()

    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 8, ascii_safe(title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)
    pdf.cell(0, 5, ascii_safe(
        f"Generated {when.strftime('%Y-%m-%d %H:%M')} UTC  |  Model version {model_info.get('version', 'unknown')}"
        f" (created {model_info.get('created', 'unknown')})"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(3)
    return pdf


def finish_document(pdf: FPDF) -> bytes:
    """The disclaimer at the end, then the PDF bytes."""
    pdf.ln(3)
    pdf.set_font("Helvetica", "I", 8)
    pdf.set_text_color(60, 60, 60)
    pdf.multi_cell(0, 4, DISCLAIMER, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(0, 0, 0)
    return bytes(pdf.output())


def build_pdf_report(
    *,
    image_rgb,
    overlay_rgb=None,
    cam_rgb=None,
    probs: Mapping[str, float],
    label: str,
    ood_level: str = "in",
    ood_reason: str = "",
    uncertainty_text: str = "",
    referral: Mapping | None = None,
    verdict: str = "",
    quality_text: str = "",
    similar_cases: Sequence[Sequence] = (),
    patient_context: Sequence[tuple[str, str]] = (),
    context_note: str = "",
    measurements: Mapping,
    model_info: Mapping,
    generated_at: datetime | None = None,
    clinician_note: str = "",
    cam_caption: str = "Class activation map",
    image_id: str = "",
    exam_date: date | None = None,
    lesion_label: str = "",
) -> bytes:
    """Render the analysis of one image as PDF bytes (see the module docstring for the privacy rules).

    ``probs`` maps class codes to probabilities (all seven listed; missing codes show 0 %), ``label`` is the top class
    code. ``ood_level`` (core.decisions.ood: in / unusual / clinical_photo / not_skin) with its one-sentence ``ood_reason``:
    for clinical_photo and not_skin the report shows the image and its verdict only ("no automated assessment: review
    this lesion yourself" with the reason; no class, probability, referral, CAM, measurement or similar case); for unusual the reason is printed as a warning above the diagnosis. ``uncertainty_text``: the
    uncertainty level in words with its measured error rate. ``referral``: ``text`` (the rule's sentence), ``numbers``
    (the melanoma score and the threshold applied) and ``threshold_note`` (whose threshold it is: the model card's or
    the session's). ``verdict``: the triage verdict in words (core.decisions.triage.Verdict.text), printed first.
    ``quality_text``: the image-quality checks that fired, in one sentence (core.decisions.image_quality), printed as a warning.
    ``similar_cases``: rows (image id, diagnosis, how it was confirmed, similarity), nearest first.
    ``patient_context``: (field, value) rows, with ``context_note`` saying whether the model used them.
    ``measurements`` is ``core.lesion.lesion_measurements.measure_lesion`` output, ``model_info`` has ``version``, ``created``
    and optionally ``metrics`` (a flat or one-level nested dict of headline numbers). ``generated_at`` (default: now,
    UTC; naive = UTC) is printed and used as the PDF creation date. ``cam_caption`` is printed under ``cam_rgb`` (say
    which method, target class and mask made it).
    ``image_id`` (see image_id()), ``exam_date`` (the DICOM study date when known; default: the date of the analysis,
    ``generated_at``) and ``lesion_label`` (the user's name for the lesion, e.g. "L2 left shoulder") let the PDF be
    filed with the patient's record without a file name in it.
    """
    pdf = start_document(REPORT_TITLE, generated_at, model_info)
    _filing_line(pdf, image_id, exam_date or _utc(generated_at).date(), exam_date is None, lesion_label)
    if ood_level in REFUSED_LEVELS:
        _images(pdf, [("Uploaded image", image_rgb)])
        _heading(pdf, "No diagnosis")
        _warning(pdf, verdict or Verdict("not_assessed", HEADLINES["not_assessed"], (
            ood_reason or "This does not look like a dermoscopic image of a skin lesion.", NOT_ASSESSED_NOTE), "").text)
    else:
        panels = [("Dermoscopic image", image_rgb), ("Lesion segmentation", overlay_rgb)]
        if cam_rgb is not None:
            panels.append((cam_caption, cam_rgb))
        _images(pdf, panels)
        _diagnosis(pdf, probs, str(label), ood_level, ood_reason, uncertainty_text, referral, verdict, quality_text)
        _heading(pdf, "Lesion measurements")
        _kv_table(pdf, describe_measurements(measurements))
        if len(similar_cases):
            _heading(pdf, "Similar confirmed cases (reference set, nearest first)")
            _table(pdf, [("Image", 40.0), ("Diagnosis", 70.0), ("Confirmed by", 50.0), ("Similarity", 20.0)],
                   [[str(v) if not isinstance(v, float) else f"{v:.2f}" for v in row] for row in similar_cases])

    if patient_context:
        _heading(pdf, "Patient context")
        _kv_table(pdf, list(patient_context))
        if context_note:
            pdf.multi_cell(0, 4.5, ascii_safe(context_note), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    _heading(pdf, "Model")
    _kv_table(pdf, _model_rows(model_info))

    note = ascii_safe(clinician_note).strip()
    if note:
        _heading(pdf, "Clinician note")
        pdf.multi_cell(0, 5, note, border=1, new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    return finish_document(pdf)


def _filing_line(pdf: FPDF, image_id: str, exam_date: date, is_analysis_date: bool, lesion_label: str) -> None:
    """What the report is filed by, in one boxed line under the title: the image's ID, the exam date (and whose date
    it is) and the lesion label."""
    parts = [f"Image ID {image_id} (file SHA-256)" if image_id else "Image ID not given",
             f"Exam date {exam_date.isoformat()}" + (" (this analysis)" if is_analysis_date else ""),
             f"Lesion {lesion_label.strip() or 'not labelled'}"]
    pdf.set_font("Helvetica", "B", 9)
    pdf.multi_cell(0, 5.5, ascii_safe("  |  ".join(parts)), border=1, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)


def _warning(pdf: FPDF, text: str) -> None:
    pdf.set_fill_color(*_WARN_FILL)
    pdf.set_font("Helvetica", "B", 9)
    pdf.multi_cell(0, 5.5, ascii_safe(text).strip(), border=1, fill=True, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)


def _diagnosis(pdf: FPDF, probs: Mapping[str, float], label: str, ood_level: str, ood_reason: str,
               uncertainty_text: str, referral: Mapping | None, verdict: str = "", quality_text: str = "") -> None:
    """The classification block: triage verdict with the melanoma score and threshold, unusual-image and
    image-quality warnings, top class, uncertainty, probability table."""
    cls = CLASS_BY_CODE.get(label)
    top_p = float(probs.get(label, 0.0) or 0.0)
    _heading(pdf, "Classification")
    _triage(pdf, verdict, referral)
    if ood_level in GREYED_LEVELS:
        _warning(pdf, f"{GREYED_HEADLINES[ood_level]}: " + (ood_reason or "the diagnosis is less reliable than the "
                                                                          "validation figures suggest."))
        pdf.ln(1)
    if quality_text:
        _warning(pdf, "Image quality: " + quality_text)
        pdf.ln(1)
    pdf.set_fill_color(*_HIGHLIGHT)
    pdf.set_font("Helvetica", "B", 11)
    malignant = " - malignant class" if cls and cls.malignant else ""
    pdf.cell(0, 8, ascii_safe(f"Most likely: {cls.name if cls else label} ({label}) {100.0 * top_p:.1f} %{malignant}"),
             border=1, fill=True, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)
    if uncertainty_text:
        pdf.multi_cell(0, 5, ascii_safe(uncertainty_text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(1)
    _probability_table(pdf, probs, label)


def _triage(pdf: FPDF, verdict: str, referral: Mapping | None) -> None:
    """The triage verdict with the melanoma score and the threshold applied in one box. The verdict already says
    whether the melanoma rule fired, so the referral's own sentence would only repeat it; without a verdict the
    referral sentence stands in for it."""
    statement = f"Triage: {verdict}" if verdict else (f"Melanoma referral: {referral['text']}" if referral else "")
    if not statement:
        return
    pdf.set_font("Helvetica", "B", 10)
    pdf.multi_cell(0, 5.5, ascii_safe(statement), border="LTR" if referral else 1, align="L", new_x=XPos.LMARGIN,
                   new_y=YPos.NEXT)
    if referral:
        pdf.set_font("Helvetica", "", 9)
        pdf.multi_cell(0, 5, ascii_safe(f"{referral['numbers']} ({referral['threshold_note']})."), border="LBR",
                       new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)
    pdf.ln(1)


def _table(pdf: FPDF, columns: list[tuple[str, float]], rows: list[list[str]]) -> None:
    """A plain table with a grey header row (cells cut to one line)."""
    pdf.set_font("Helvetica", "B", 9)
    pdf.set_fill_color(*_HEADER_FILL)
    for name, width in columns:
        pdf.cell(width, 6, name, border=1, fill=True)
    pdf.ln(6)
    pdf.set_font("Helvetica", "", 9)
    for row in rows:
        for (_, width), value in zip(columns, row):
            pdf.cell(width, 5, ascii_safe(value), border=1)
        pdf.ln(5)
