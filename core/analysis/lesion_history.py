"""A lesion's history: N dated images (visits) of one lesion, each analysed and compared with the first visit (the
baseline) and with the previous one exactly as the two-image follow-up does (core.analysis.followup), and one
verdict for the series.

    history = lesion_history(analyzer, [Visit(rgb, date, "visit 1"), ...], band)
    history.verdict()          # "Stable over 4 visits (371 days): ..." / "Changed at visit 3 (...): ..."
    history.series("max_diameter")   # per visit: value in baseline units, change vs the baseline, status
    history.first_change()     # (visit number, its findings) of the first visit beyond the noise, or None

Registration to the baseline: directly by feature matching; when that fails but the visit registers to the previous
visit, which is itself registered to the baseline, the two transforms are composed (a lesion photographed over
years drifts away from the first framing more than from the last one). A visit that registers neither way may not
show the same lesion: nothing of it is compared (its row says so), as the two-image rule does.

What counts as a change and its order are those of followup.Comparison.findings: a change of the most probable class
or of the triage verdict first, then the measurements beyond their no-change band in clinical order. The band is
that of two photographs taken minutes apart (weights/followup_noise.json): it is compared with each visit's change
from the baseline, so a series of N visits gives N - 1 chances of a false alarm (docs/followup.md measures the
rate). Sizes are in baseline pixels, and in millimetres when the baseline's pixel size is known (DICOM
PixelSpacing).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from core.analysis.followup import (BEYOND, MEASURES, Comparison, Registration, compare_results, measure_values,
                                    refuse_same_image, register, touches_edge)

#: What follow-up guidelines do with a change, in one factual sentence (Kittler et al. 2000; Menzies et al. 2001;
#: Argenziano et al. 2012 on digital dermoscopy monitoring).
GUIDELINE_NOTE = ("In digital dermoscopy monitoring, a melanocytic lesion that changes at short-term follow-up "
                  "(about 3 months) is usually excised or referred; at long-term (yearly) follow-up, growth alone is "
                  "common in benign naevi, and a change of structure or colour weighs more.")
MEASURE_BY_KEY = {m.key: m for m in MEASURES}


@dataclass(frozen=True)
class Visit:
    rgb: np.ndarray
    date: dt.date
    name: str = ""                     # what the page and the PDF call it (never a patient identifier)
    mm_per_pixel: float | None = None  # from the file's DICOM PixelSpacing, or entered


@dataclass
class VisitAnalysis:
    visit: Visit
    result: object                       # core.analysis.inference.AnalysisResult
    to_first: Comparison | None = None   # None for the baseline
    to_previous: Comparison | None = None
    doubt: str = ""                      # why this visit may not show the lesion of the baseline ("" when it does)

    @property
    def edge(self) -> bool:
        """The lesion reaches the image border: it may continue outside the image (sizes are not compared)."""
        return touches_edge(self.result.mask)


@dataclass(frozen=True)
class SeriesPoint:
    date: dt.date
    value: float | None     # in baseline units (sizes converted with the registration), None without a lesion
    change: float | None    # vs the baseline (relative for sizes)
    status: str             # followup statuses; "baseline" for the first visit


@dataclass
class LesionHistory:
    visits: list[VisitAnalysis]
    band: dict | None
    band_text: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> VisitAnalysis:
        return self.visits[0]

    @property
    def days(self) -> int:
        return (self.visits[-1].visit.date - self.visits[0].visit.date).days

    @property
    def mm_per_pixel(self) -> float | None:
        return self.baseline.visit.mm_per_pixel

    def number(self, analysis: VisitAnalysis) -> int:
        return self.visits.index(analysis) + 1

    def series(self, key: str) -> list[SeriesPoint]:
        """One point per visit for a followup.MEASURES key; values in baseline units."""
        base = measure_values(self.baseline.result)[key]
        points = [SeriesPoint(self.baseline.visit.date, base, None if base is None else 0.0, "baseline")]
        for analysis in self.visits[1:]:
            change = next(c for c in analysis.to_first.changes if c.measure.key == key)
            points.append(SeriesPoint(analysis.visit.date, change.followup, change.change, change.status))
        return points

    def band_limits(self, key: str) -> tuple[float, float] | None:
        """(low, high) of the no-change band around the baseline value, in baseline units; None without a band or
        a baseline value."""
        width = ((self.band or {}).get("measurements", {}).get(key) or {}).get("band")
        base = self.series(key)[0].value
        if width is None or base is None:
            return None
        measure = MEASURE_BY_KEY[key]
        if measure.relative:
            return base * (1 - width), base * (1 + width)
        if measure.probability:
            return max(0.0, base - width), min(1.0, base + width)
        return max(0.0, base - width), base + width  # asymmetry, irregularity and colour counts are not negative

    def first_beyond(self, key: str) -> int | None:
        """The number (1 = baseline) of the first visit whose change of this measure exceeds the band."""
        return next((n for n, p in enumerate(self.series(key), start=1) if p.status == BEYOND), None)

    def first_change(self) -> tuple[int, list[str]] | None:
        """(visit number, findings against the baseline at that visit) of the first visit with any change."""
        for number, analysis in enumerate(self.visits[1:], start=2):
            comparison = analysis.to_first
            if comparison is not None and not analysis.doubt:
                found = comparison.findings(self.mm_per_pixel)
                if found:
                    return number, found
        return None

    def doubted(self) -> list[int]:
        return [n for n, a in enumerate(self.visits, start=1) if a.doubt]

    def verdict(self) -> str:
        """One sentence (two with the guideline note) for the whole series."""
        n, days = len(self.visits), self.days
        doubted = self.doubted()
        if doubted and len(doubted) == n - 1:
            return (f"The follow-up images may not show the lesion of the first visit ({self.visits[-1].doubt}): no "
                    "change is reported.")
        doubt = (f" Visit(s) {', '.join(map(str, doubted))} may not show the same lesion and were not compared."
                 if doubted else "")
        if self.band is None:
            return (f"{n} visits over {days} days; no no-change band is available, so no change is assessed."
                    + doubt)
        change = self.first_change()
        if change is None:
            return f"Stable over {n} visits ({days} days): no change beyond the measurement noise." + doubt
        number, found = change
        date = self.visits[number - 1].visit.date
        head = f"Changed at visit {number} ({date.isoformat()}, {(date - self.baseline.visit.date).days} days): "
        return head + "; ".join(found) + "." + doubt + " " + GUIDELINE_NOTE

    def edge_visits(self) -> list[int]:
        return [n for n, a in enumerate(self.visits, start=1) if a.edge]


def order_visits(visits: list[Visit]) -> list[Visit]:
    """Oldest first (a stable sort: visits of one day keep their given order); SameImage for one image given twice."""
    ordered = sorted(visits, key=lambda v: v.date)
    for later in range(1, len(ordered)):
        for earlier in range(later):
            refuse_same_image(ordered[earlier].rgb, ordered[later].rgb,
                              f"images of visit {earlier + 1} and visit {later + 1}")
    return ordered


def lesion_history(analyzer, visits: list[Visit], band: dict | None, band_text: str = "", results=None,
                   verdict=None) -> LesionHistory:
    """Analyse (unless ``results``, AnalysisResults in the order of ``visits``, are given) and compare every visit;
    ``verdict(result)`` as in followup.categorical_changes. ValueError with a sentence for fewer than two visits,
    SameImage when one image is given twice."""
    if len(visits) < 2:
        raise ValueError("A lesion history needs at least two visits (images of the lesion on two dates).")
    given = {id(v): r for v, r in zip(visits, results)} if results is not None else {}
    ordered = order_visits(visits)
    analyses = [VisitAnalysis(v, given.get(id(v)) or analyzer.analyze(v.rgb)) for v in ordered]
    base = analyses[0]
    to_base: list[Registration | None] = [None]
    for index in range(1, len(analyses)):
        current, previous = analyses[index], analyses[index - 1]
        direct = register(base.visit.rgb, current.visit.rgb, base.result.mask, current.result.mask)
        if index == 1:
            step, onto_base = direct, direct
        else:
            step = register(previous.visit.rgb, current.visit.rgb, previous.result.mask, current.result.mask)
            onto_base = direct
            if not direct.registered and step.registered and to_base[index - 1] is not None \
                    and to_base[index - 1].registered:
                onto_base = step.then(to_base[index - 1], f"via visit {index}")
        to_base.append(onto_base)
        current.to_first = compare_results(base.result, current.result, base.visit.rgb, current.visit.rgb, band,
                                           registration=onto_base, verdict=verdict,
                                           mm_per_pixel=(base.visit.mm_per_pixel, current.visit.mm_per_pixel))
        current.to_previous = current.to_first if index == 1 else compare_results(
            previous.result, current.result, previous.visit.rgb, current.visit.rgb, band, registration=step,
            verdict=verdict, mm_per_pixel=(previous.visit.mm_per_pixel, current.visit.mm_per_pixel))
        if not onto_base.registered:
            current.doubt = (f"visit {index + 1} registers neither to the first visit nor, through the previous "
                             "visit, to it")
    return LesionHistory(analyses, band, band_text)


# ---------------------------------------------------------------- display (the page and the PDF)
#: The measures charted over time, most important first.
CHART_KEYS = ("p_mel", "max_diameter", "area", "asymmetry", "border_irregularity", "n_colours")
VISIT_COLUMNS = ("Visit", "Date", "Days", "Most probable class", "Triage verdict", "Maximum diameter", "Area",
                 "Since the first visit", "Since the previous visit")


def unit_of(history: LesionHistory, key: str) -> tuple[float, str]:
    """(factor, unit) turning a series value into what the chart shows: mm / mm² with a known baseline pixel size,
    px otherwise; percent for probabilities."""
    measure = MEASURE_BY_KEY[key]
    if measure.probability:
        return 100.0, "%"
    if measure.relative:
        mm = history.mm_per_pixel
        if mm:
            return mm ** measure.size_power, "mm²" if measure.size_power == 2 else "mm"
        return 1.0, "px²" if measure.size_power == 2 else "px"
    return 1.0, ""


def chart_rows(history: LesionHistory, key: str) -> list[dict]:
    """One row per visit for a chart of ``key``: visit, date, value (display units), status, band low / high."""
    factor, _ = unit_of(history, key)
    limits = history.band_limits(key)
    return [{"visit": n, "date": p.date, "value": None if p.value is None else p.value * factor, "status": p.status,
             "low": None if limits is None else limits[0] * factor,
             "high": None if limits is None else limits[1] * factor}
            for n, p in enumerate(history.series(key), start=1)]


def _size_text(history: LesionHistory, value: float | None, power: int) -> str:
    if value is None:
        return "—"
    mm = history.mm_per_pixel
    if mm:
        return f"{value * mm ** power:.1f} mm²" if power == 2 else f"{value * mm:.2f} mm"
    return f"{value:,.0f} px" if power == 2 else f"{value:.1f} px"


def _against(analysis: VisitAnalysis, comparison: Comparison | None, mm_per_pixel: float | None) -> str:
    if comparison is None:
        return "baseline"
    if analysis.doubt or comparison.lesion_doubt:
        return "may not be the same lesion"
    found = comparison.findings(mm_per_pixel)
    return "; ".join(found) if found else "no change beyond noise"


def visit_rows(history: LesionHistory, verdict=None) -> list[tuple[str, ...]]:
    """The visit table as display strings in VISIT_COLUMNS order (``verdict`` as in followup.categorical_changes)."""
    verdict = verdict or (lambda result: result.triage)
    rows = []
    for number, analysis in enumerate(history.visits, start=1):
        result = analysis.result
        if result.diagnosis_shown:
            top = f"{result.label} {100 * result.probs[result.label]:.0f} %"
            triage = verdict(result)
            triage = triage.headline if triage is not None else "—"
        else:
            top, triage = "not dermoscopy", "Not assessed"
        points = {key: history.series(key)[number - 1].value for key in ("max_diameter", "area")}
        diameter = _size_text(history, points["max_diameter"], 1) + (" (edge)" if analysis.edge else "")
        rows.append((str(number), analysis.visit.date.isoformat(),
                     str((analysis.visit.date - history.baseline.visit.date).days), top, triage, diameter,
                     _size_text(history, points["area"], 2),
                     _against(analysis, analysis.to_first, history.mm_per_pixel),
                     _against(analysis, analysis.to_previous, history.mm_per_pixel)))
    return rows
