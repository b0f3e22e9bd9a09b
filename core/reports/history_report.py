"""PDF of a lesion history (core.analysis.lesion_history.LesionHistory), on core.reports.report's layout and privacy
rules: the series verdict, a thumbnail of every visit with its contour, a chart over time of each charted measure
with its no-change band and the first visit beyond it, the visit table and each visit's findings. Images re-encoded
from their pixels, no file names, only the text the caller passes in, deterministic bytes for a given
``generated_at``, printable ASCII only. The charts are drawn with the PDF's own lines (no plotting library)."""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from core.analysis.followup import BEYOND
from core.analysis.lesion_history import (CHART_KEYS, MEASURE_BY_KEY, VISIT_COLUMNS, LesionHistory, chart_rows,
                                          unit_of, visit_rows)
from core.reports.report import (_CONTENT_W, _HEADER_FILL, _MARGIN, _WARN_FILL, _heading, _images, ascii_safe,
                                 finish_document, start_document)

__all__ = ["HISTORY_TITLE", "build_history_pdf"]

HISTORY_TITLE = "LesionLens lesion history"
THUMBNAILS_PER_ROW = 5
CHART_W, CHART_H, CHART_GAP = 87.0, 42.0, 6.0
_BAND_FILL = (220, 240, 220)
_LINE = (41, 98, 255)
_FLAG = (230, 81, 0)
_TABLE_COLUMNS = VISIT_COLUMNS[:7]  # the findings columns are printed as paragraphs below the table


def _paragraph(pdf: FPDF, text: str, warn: bool = False, bold: bool = False) -> None:
    pdf.set_font("Helvetica", "B" if bold else "", 9)
    if warn:
        pdf.set_fill_color(*_WARN_FILL)
    pdf.multi_cell(0, 5, ascii_safe(text), border=1 if warn else 0, fill=warn, new_x=XPos.LMARGIN,
                   new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)


def _chart(pdf: FPDF, x: float, y: float, history: LesionHistory, key: str) -> None:
    """One measure over time in a CHART_W x CHART_H box: band, values, the first visit beyond the band."""
    rows = chart_rows(history, key)
    _, unit = unit_of(history, key)
    title = MEASURE_BY_KEY[key].label + (f" ({unit})" if unit else "")
    pdf.set_font("Helvetica", "B", 8)
    pdf.set_xy(x, y)
    pdf.cell(CHART_W, 4, ascii_safe(title))
    top, left, width, height = y + 5, x + 12, CHART_W - 14, CHART_H - 11
    values = [r["value"] for r in rows if r["value"] is not None]
    span = values + [v for r in rows[:1] for v in (r["low"], r["high"]) if v is not None]
    if not values:
        pdf.set_font("Helvetica", "", 7)
        pdf.set_xy(left, top + height / 2)
        pdf.cell(width, 4, "no lesion measured", align="C")
        return
    low, high = min(span), max(span)
    pad = (high - low) * 0.1 or abs(high) * 0.1 or 1.0
    low, high = low - pad, high + pad
    days = [(r["date"] - rows[0]["date"]).days for r in rows]
    days = days if max(days) > 0 else list(range(len(rows)))  # visits of one day: evenly spaced
    last = max(days) or 1

    def px(day: float) -> float:
        return left + width * day / last

    def py(value: float) -> float:
        return top + height * (1 - (value - low) / (high - low))

    pdf.set_draw_color(160, 160, 160)
    pdf.rect(left, top, width, height)
    if rows[0]["low"] is not None:
        pdf.set_fill_color(*_BAND_FILL)
        band_top, band_bottom = py(min(rows[0]["high"], high)), py(max(rows[0]["low"], low))
        pdf.rect(left, band_top, width, band_bottom - band_top, style="F")
    first = history.first_beyond(key)
    if first is not None:
        pdf.set_draw_color(*_FLAG)
        pdf.set_dash_pattern(dash=1, gap=1)
        pdf.line(px(days[first - 1]), top, px(days[first - 1]), top + height)
        pdf.set_dash_pattern()
    points = [(px(d), py(r["value"]), r["status"]) for d, r in zip(days, rows) if r["value"] is not None]
    pdf.set_draw_color(*_LINE)
    pdf.set_line_width(0.4)
    for (x0, y0, _), (x1, y1, _) in zip(points, points[1:]):
        pdf.line(x0, y0, x1, y1)
    pdf.set_line_width(0.2)
    for px_, py_, status in points:
        pdf.set_fill_color(*(_FLAG if status == BEYOND else _LINE))
        pdf.ellipse(px_ - 0.9, py_ - 0.9, 1.8, 1.8, style="F")
    pdf.set_draw_color(0, 0, 0)
    pdf.set_font("Helvetica", "", 6.5)
    for value in (high - pad, low + pad):
        pdf.set_xy(x, py(value) - 1.5)
        pdf.cell(11, 3, f"{value:.3g}", align="R")
    pdf.set_xy(left, top + height + 0.5)
    pdf.cell(width / 2, 3, rows[0]["date"].isoformat())
    pdf.cell(width / 2, 3, rows[-1]["date"].isoformat(), align="R")


def _charts(pdf: FPDF, history: LesionHistory) -> None:
    for index, key in enumerate(CHART_KEYS):
        column = index % 2
        if column == 0:
            if pdf.get_y() + CHART_H > pdf.h - pdf.b_margin:
                pdf.add_page()
            row_y = pdf.get_y()
        _chart(pdf, _MARGIN + column * (CHART_W + CHART_GAP), row_y, history, key)
        if column == 1 or index == len(CHART_KEYS) - 1:
            pdf.set_xy(_MARGIN, row_y + CHART_H)
    pdf.set_font("Helvetica", "", 7.5)
    pdf.multi_cell(0, 4, "Green: the no-change band around the first visit's value (two photographs of one lesion "
                         "differ this much 19 times in 20). Orange points: beyond the band; dashed line: the first "
                         "visit beyond it. Sizes in the first visit's pixels (mm where its pixel size is known).",
                   new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)


def _table(pdf: FPDF, rows: list[tuple[str, ...]]) -> None:
    widths = [10, 20, 12, 34, 40, 32, 32]
    scale = _CONTENT_W / sum(widths)
    widths = [w * scale for w in widths]
    pdf.set_font("Helvetica", "B", 7.5)
    pdf.set_fill_color(*_HEADER_FILL)
    for name, width in zip(_TABLE_COLUMNS, widths):
        pdf.cell(width, 5.5, name, border=1, fill=True, align="C")
    pdf.ln(5.5)
    pdf.set_font("Helvetica", "", 7.5)
    for row in rows:
        for text, width in zip(row[:len(_TABLE_COLUMNS)], widths):
            pdf.cell(width, 5, ascii_safe(text), border=1, align="C")
        pdf.ln(5)
    pdf.set_font("Helvetica", "", 9)


def build_history_pdf(*, history: LesionHistory, thumbnails: list[tuple[str, object]], band_text: str,
                      model_info: Mapping, verdict=None, generated_at: datetime | None = None,
                      clinician_note: str = "") -> bytes:
    """The history as PDF bytes. ``thumbnails``: (caption, RGB image with its contour) per visit, oldest first;
    ``band_text`` describes the no-change band (or why it is unavailable); ``verdict`` as in
    core.analysis.followup.categorical_changes; ``model_info`` as for core.reports.report."""
    pdf = start_document(HISTORY_TITLE, generated_at, model_info)
    _paragraph(pdf, history.verdict(), warn=history.first_change() is not None or bool(history.doubted()),
               bold=True)
    _paragraph(pdf, ("No-change band: " if history.band is not None else "No-change band unavailable: ") + band_text)
    edges = history.edge_visits()
    if edges:
        _paragraph(pdf, f"The lesion touches the image border at visit(s) {', '.join(map(str, edges))}: it may continue"
                        " outside the image, so sizes there are not compared.", warn=True)
    _heading(pdf, f"Visits ({len(history.visits)})")
    for start in range(0, len(thumbnails), THUMBNAILS_PER_ROW):
        _images(pdf, thumbnails[start:start + THUMBNAILS_PER_ROW])
    _heading(pdf, "Over time")
    _charts(pdf, history)
    if pdf.get_y() + 30 > pdf.h - pdf.b_margin:
        pdf.add_page()
    _heading(pdf, "Visit table")
    rows = visit_rows(history, verdict)
    _table(pdf, rows)
    pdf.ln(2)
    for number, row in enumerate(rows[1:], start=2):
        since_previous = f" Since the previous visit: {row[8]}." if number > 2 else ""
        _paragraph(pdf, f"Visit {row[0]} since the first visit: {row[7]}.{since_previous}")
    note = ascii_safe(clinician_note).strip()
    if note:
        _heading(pdf, "Clinician note")
        pdf.multi_cell(0, 5, note, border=1, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    return finish_document(pdf)
