"""PDF report of a lesion follow-up comparison (core.analysis.followup.Comparison), on core.reports.report's layout and privacy rules:
images re-encoded from their pixels (no EXIF, no ICC text), no file names, only the text the caller passes in,
deterministic bytes for a given ``generated_at``, printable ASCII only."""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from core.data.classes import CLASS_BY_CODE
from core.decisions.ood_levels import GREYED_HEADLINES, GREYED_LEVELS
from core.analysis.followup import BEYOND, TABLE_COLUMNS, Comparison, table_text
from core.reports.report import (_CONTENT_W, _HEADER_FILL, _HIGHLIGHT, _WARN_FILL, _heading, _images, ascii_safe,
                                 finish_document, start_document)

__all__ = ["COMPARISON_TITLE", "build_comparison_pdf"]

COMPARISON_TITLE = "LesionLens follow-up comparison"
_CELL_PADDING = 2.5  # mm
_TABLE_FONT_SIZES = (7.5, 7.0, 6.5, 6.0)  # the largest at which the table fits the page width


def _fit_columns(pdf: FPDF, rows: list[tuple[str, ...]]) -> tuple[float, list[float]]:
    """(font size, column widths): each column as wide as its longest text at the largest font size that fits,
    spread to the content width."""
    for size in _TABLE_FONT_SIZES:
        pdf.set_font("Helvetica", "B", size)  # bold: the widest a row is printed in
        needed = [max(pdf.get_string_width(ascii_safe(text)) for text in column) + _CELL_PADDING
                  for column in zip(TABLE_COLUMNS, *rows)]
        if sum(needed) <= _CONTENT_W:
            break
    return size, [width * _CONTENT_W / sum(needed) for width in needed]


def _change_table(pdf: FPDF, comparison: Comparison, mm_per_pixel: float | None) -> None:
    rows = table_text(comparison.changes, mm_per_pixel)
    size, widths = _fit_columns(pdf, rows)
    pdf.set_fill_color(*_HEADER_FILL)
    for name, width in zip(TABLE_COLUMNS, widths):
        pdf.cell(width, 5.5, name, border=1, fill=True, align="C")
    pdf.ln(5.5)
    pdf.set_fill_color(*_HIGHLIGHT)
    for change, row in zip(comparison.changes, rows):
        beyond = change.status == BEYOND
        pdf.set_font("Helvetica", "B" if beyond else "", size)
        for index, (text, width) in enumerate(zip(row, widths)):
            pdf.cell(width, 5, ascii_safe(text), border=1, fill=beyond, align="L" if index == 0 else "C")
        pdf.ln(5)
    pdf.set_font("Helvetica", "", 9)


def _paragraph(pdf: FPDF, text: str, warn: bool = False) -> None:
    if warn:
        pdf.set_fill_color(*_WARN_FILL)
    pdf.multi_cell(0, 5, ascii_safe(text), border=1 if warn else 0, fill=warn, new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def build_comparison_pdf(*, panels: list[tuple[str, object]], comparison: Comparison, band_available: bool,
                         band_text: str, mm_per_pixel: float | None, model_info: Mapping,
                         generated_at: datetime | None = None, clinician_note: str = "") -> bytes:
    """The comparison as PDF bytes. ``panels``: (caption, RGB image) shown side by side (baseline, follow-up, overlay);
    ``band_text`` describes the no-change band (or why it is unavailable); ``mm_per_pixel`` is the baseline's pixel
    size (None: pixels only); ``model_info`` as for core.reports.report."""
    pdf = start_document(COMPARISON_TITLE, generated_at, model_info)
    _images(pdf, panels)

    _heading(pdf, "Registration")
    registration = comparison.registration
    _paragraph(pdf, registration.describe(), warn=not registration.registered)
    if comparison.size_note:
        _paragraph(pdf, f"Size changes are not assessed: {comparison.size_note}.")
    for role, result in (("Baseline", comparison.baseline), ("Follow-up", comparison.followup)):
        if result.diagnosis_shown:
            name = CLASS_BY_CODE[result.label].name
            line = f"{role}: most likely {name} ({result.label}) {100 * result.probs[result.label]:.1f} %"
            if result.ood_level in GREYED_LEVELS:
                line += f" - {GREYED_HEADLINES[result.ood_level].lower()}: {result.ood_reason}"
        else:
            line = f"{role}: no diagnosis. {result.ood_reason}"
        _paragraph(pdf, line, warn=result.ood_level != "in")

    _heading(pdf, "Changes (follow-up minus baseline, sizes in baseline pixels)")
    _paragraph(pdf, ("No-change band: " if band_available else "No-change band unavailable: ") + band_text,
               warn=not band_available)
    if band_available or comparison.lesion_doubt:
        pdf.set_font("Helvetica", "B", 9)
        _paragraph(pdf, comparison.verdict(), warn=bool(comparison.lesion_doubt))
        pdf.set_font("Helvetica", "", 9)
    pdf.ln(1)
    _change_table(pdf, comparison, mm_per_pixel)

    note = ascii_safe(clinician_note).strip()
    if note:
        _heading(pdf, "Clinician note")
        pdf.multi_cell(0, 5, note, border=1, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    return finish_document(pdf)
