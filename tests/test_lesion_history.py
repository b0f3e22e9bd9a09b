"""A lesion's history over N visits (core.analysis.lesion_history), its PDF (core.reports.history_report) and what
the two-image comparison now states first (core.analysis.followup), on real HAM10000 lesions photographed several
times (held-out test split) and the shipped weights: a series without change, the same series with the lesion grown
by a known amount at a known visit (calibration.lesion_history_eval.enlarge), a series with another lesion in it, one
image given twice."""
from __future__ import annotations

import datetime as dt
from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import pytest

from core.analysis.followup import (BEYOND, CHAINED, CLINICAL_ORDER, FEATURES, UNINFORMATIVE, Registration,
                                    SameImage, compare_images, compare_results, touches_edge)
from core.analysis.lesion_history import (CHART_KEYS, GUIDELINE_NOTE, MEASURE_BY_KEY, VISIT_COLUMNS, Visit,
                                          chart_rows, lesion_history, visit_rows)
from core.io.intake import load_image_file
from core.reports.history_report import HISTORY_TITLE, build_history_pdf
from test_report import pdf_text
from tests.test_followup import WEIGHTS, analyzer, band  # noqa: F401 - the shipped Analyzer and band fixtures
from calibration.lesion_history_eval import enlarge, series_of

START = dt.date(2026, 1, 5)
GROWTH = 1.3  # of the diameter, at the lesion's border


def _visits(images, step_days: int = 90) -> list[Visit]:
    return [Visit(rgb, START + dt.timedelta(days=step_days * i), f"visit {i + 1}") for i, rgb in enumerate(images)]


def _grown(analyzer, band, images, results, grown_from: int):
    """The series with the lesion grown by GROWTH from visit `grown_from` on: (images, results, history)."""
    images, results = list(images), list(results)
    for index in range(grown_from - 1, len(images)):
        images[index], _ = enlarge(images[index], results[index].mask, GROWTH, core=0.5)
        results[index] = analyzer.analyze(images[index])
    return images, results, lesion_history(analyzer, _visits(images), band, results=results)


@pytest.fixture(scope="module")
def stable_series(ham_split, analyzer, band):
    """The first held-out lesion (by lesion id) with three or more photographs whose history registers every visit
    and shows no size change, also when its lesion is grown (inside the image, still registered): (images, results,
    history, the other test images, {grown_from: grown history})."""
    test = ham_split[ham_split["split"] == "test"]
    for rows in (s for s in series_of(test) if len(s) >= 3):
        images = [load_image_file(p) for p in rows["image_path"]][:3]
        results = [analyzer.analyze(rgb) for rgb in images]
        history = lesion_history(analyzer, _visits(images), band, results=results)
        sizes = [history.first_beyond(key) for key in ("max_diameter", "area")]
        if history.doubted() or sizes != [None, None] or any(a.edge for a in history.visits):
            continue
        grown = {k: _grown(analyzer, band, images, results, k)[2] for k in (2, 3)}
        if not any(h.doubted() or any(a.edge for a in h.visits) for h in grown.values()):
            return images, results, history, test[test["lesion_id"] != rows["lesion_id"].iloc[0]], grown
    pytest.fail("no held-out lesion with three registered, unchanged photographs")


def test_a_series_of_one_lesion_compares_every_visit_with_the_first_and_the_previous(stable_series, analyzer, band):
    images, results, history, _, _ = stable_series
    assert [a.visit.date for a in history.visits] == [START + dt.timedelta(days=90 * i) for i in range(3)]
    assert history.days == 180 and history.visits[0].to_first is None
    # visit 2 against the first is the two-image comparison of those two images
    pair = compare_images(analyzer, images[0], images[1], band)
    assert [(c.measure.key, c.followup, c.status) for c in history.visits[1].to_first.changes] == \
        [(c.measure.key, c.followup, c.status) for c in pair.changes]
    # visit 3 has its own comparison with visit 2
    assert history.visits[2].to_previous is not history.visits[2].to_first
    diameter = history.series("max_diameter")
    assert diameter[0].status == "baseline" and diameter[0].value == results[0].measurements["max_diameter_px"]
    low, high = history.band_limits("max_diameter")
    width = band["measurements"]["max_diameter"]["band"]
    assert (low, high) == pytest.approx((diameter[0].value * (1 - width), diameter[0].value * (1 + width)))
    assert 0 <= history.band_limits("p_mel")[0] <= history.band_limits("p_mel")[1] <= 1  # a probability band stays in [0, 1]
    change = history.first_change()
    assert history.verdict().startswith("Stable over 3 visits (180 days)") == (change is None)
    if change is not None:
        assert history.verdict().startswith(f"Changed at visit {change[0]}") and GUIDELINE_NOTE in history.verdict()
    rows = visit_rows(history)
    assert len(rows) == 3 and all(len(r) == len(VISIT_COLUMNS) for r in rows) and rows[0][7] == "baseline"
    assert [r["visit"] for r in chart_rows(history, "max_diameter")] == [1, 2, 3]


@pytest.mark.parametrize("grown_from", [2, 3])
def test_a_lesion_grown_at_a_known_visit_is_flagged_at_that_visit(stable_series, band, grown_from):
    """The lesion grows by 30 % of its diameter (at its border) from visit `grown_from` on."""
    history = stable_series[4][grown_from]
    assert history.first_beyond("max_diameter") == grown_from, [p.status for p in history.series("max_diameter")]
    number, _ = history.first_change()
    assert number <= grown_from  # an earlier visit may show another change (the series' false alarms)
    assert history.verdict().startswith(f"Changed at visit {number} (")
    assert any(f.startswith("Maximum diameter +") for f in history.visits[grown_from - 1].to_first.findings())
    diameter = history.series("max_diameter")[grown_from - 1]
    assert diameter.status == BEYOND and diameter.change > band["measurements"]["max_diameter"]["band"]


def test_another_lesion_in_the_series_is_refused_as_not_the_same_lesion(stable_series, analyzer, band):
    images, results, _, others, _ = stable_series
    stranger = load_image_file(others.iloc[0]["image_path"])
    history = lesion_history(analyzer, _visits([*images[:2], stranger]), band, results=[*results[:2], None])
    assert history.doubted() == [3] and "registers neither" in history.visits[2].doubt
    assert "Visit(s) 3 may not show the same lesion and were not compared" in history.verdict()
    assert visit_rows(history)[2][7] == "may not be the same lesion"
    assert history.visits[2].to_first.findings() == []  # nothing of the stranger counts as a change
    alone = lesion_history(analyzer, _visits([images[0], stranger]), band, results=[results[0], None])
    assert alone.verdict().startswith("The follow-up images may not show the lesion of the first visit")


def test_one_image_twice_and_a_single_visit_are_refused_in_words(stable_series, analyzer, band):
    images, _, _, _, _ = stable_series
    with pytest.raises(SameImage, match="images of visit 1 and visit 3 are the same image"):
        lesion_history(analyzer, _visits([images[0], images[1], images[0].copy()]), band)
    with pytest.raises(SameImage, match="baseline and follow-up are the same image"):
        compare_images(analyzer, images[0], images[0].copy(), band)
    with pytest.raises(ValueError, match="at least two visits"):
        lesion_history(analyzer, _visits(images[:1]), band)


def test_registrations_compose_through_the_previous_visit():
    def similarity(scale, degrees, shift):
        matrix = cv2.getRotationMatrix2D((0, 0), degrees, scale)
        matrix[:, 2] = shift
        return Registration(matrix, FEATURES, 40, 30)

    first, second = similarity(0.8, 10, (5, -3)), similarity(1.5, -4, (-2, 7))
    chained = first.then(second, "via visit 2")
    point = np.array([12.0, 30.0, 1.0])
    expected = second.matrix @ np.append(first.matrix @ point, 1.0)
    assert chained.matrix @ point == pytest.approx(expected)
    assert chained.method == CHAINED and chained.registered and chained.scale == pytest.approx(1.2)
    assert "via visit 2" in chained.describe()
    failed = replace(second, method="lesion masks")
    assert not first.then(failed, "via visit 2").registered


def test_pixel_spacing_puts_sizes_in_millimetres_without_the_registration(stable_series, analyzer, band):
    """The baseline at half its pixels with twice the pixel size: the same lesion, the same millimetres."""
    images, results, _, _, _ = stable_series
    small = cv2.resize(images[0], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    comparison = compare_results(results[0], analyzer.analyze(small), images[0], small, band,
                                 mm_per_pixel=(0.02, 0.04))
    assert comparison.size_scale == "pixel spacing"
    diameter = next(c for c in comparison.changes if c.measure.key == "max_diameter")
    assert abs(diameter.change) < 0.05 and diameter.followup == pytest.approx(
        2 * analyzer.analyze(small).measurements["max_diameter_px"])


def test_top_class_and_verdict_changes_come_first_and_measurements_in_clinical_order(ham_split, analyzer, band):
    """Two real analyses of different top class, compared as registered: the class change is stated first, then
    every measurement beyond a (here tiny) band in clinical order: melanoma before vascular, whatever the widths."""
    shipped = pd.read_csv(WEIGHTS / "test_predictions.csv")
    picked = [shipped[(shipped["source"] == "ham10000") & (shipped["pred"] == code) & (shipped["dx"] == code)]
              .iloc[0]["image_id"] for code in ("nv", "mel")]  # a nevus and a melanoma the model gets right
    paths = ham_split.set_index("image_id").loc[picked, "image_path"]
    a, b = (load_image_file(path) for path in paths)
    before, after = analyzer.analyze(a), analyzer.analyze(b)
    assert before.label != after.label, (before.label, after.label)
    identity = Registration(np.array([[1.0, 0, 0], [0, 1.0, 0]]), FEATURES, 50, 50)
    tiny = {"measurements": {key: {"band": 1e-6} for key in band["measurements"]}}
    comparison = compare_results(before, after, a, b, tiny, registration=identity)
    found = comparison.findings()
    assert found[0].startswith("most probable class changed from ")
    keys = [c.measure.key for c in comparison.beyond_noise()]
    assert keys == sorted(keys, key=CLINICAL_ORDER.index) and "p_mel" in keys
    assert comparison.verdict().startswith(f"{len(found)} change(s): most probable class changed")
    # the shipped band: P(melanoma) is uninformative, but a move of 10 pp or more is still said
    real = compare_results(before, after, a, b, band, registration=identity)
    mel_change = next(c for c in real.changes if c.measure.key == "p_mel")
    assert mel_change.status == UNINFORMATIVE and abs(mel_change.change) >= 0.10  # nevus -> melanoma
    assert "P(melanoma) went from" in real.verdict() and real.findings()[0].startswith("most probable class changed")


def test_history_pdf_holds_the_verdict_thumbnails_charts_and_table(stable_series, analyzer, band):
    images, results, history, _, _ = stable_series
    thumbnails = [(f"Visit {i + 1}", rgb) for i, rgb in enumerate(images)]
    pdf = build_history_pdf(history=history, thumbnails=thumbnails, band_text="95th percentile band",
                            model_info={"version": "v-test", "created": "today"}, clinician_note="watch the border")
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Subtype /Image") == len(images)
    text = pdf_text(pdf)
    assert HISTORY_TITLE in text and "v-test" in text and "watch the border" in text
    assert history.verdict().split(":")[0] in text
    for column in VISIT_COLUMNS[:7]:
        assert column in text
    for row in visit_rows(history):
        assert row[1] in text  # every visit's date
    for key in CHART_KEYS:  # a chart per measure, titled by its label
        assert MEASURE_BY_KEY[key].label.split(" (")[0] in text
    assert "Maximum diameter (px)" in text and "ISIC_" not in text
