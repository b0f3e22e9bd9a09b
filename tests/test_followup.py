"""Lesion follow-up (core.analysis.followup, core.reports.comparison_report, calibration.followup_noise, the Compare page) on real
HAM10000 images and the shipped weights."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.reports.comparison_report import COMPARISON_TITLE, build_comparison_pdf
from core.analysis.followup import (BAND_FILE, BASELINE_COLOUR, BEYOND, FOLLOWUP_COLOUR, LESION_MASKS, MEASURES,
                                    NO_LESION, NOT_ASSESSED, NOT_COMPARED, TABLE_COLUMNS, UNINFORMATIVE,
                                    UNINFORMATIVE_PROBABILITY_BAND, WITHIN, compare_images, contours, load_band,
                                    register, table_text, touches_edge, weights_fingerprint)
from core.analysis.inference import Analyzer
from core.io.intake import load_image, load_image_file
from core.decisions.model_card import load_card
from test_report import pdf_text
from tests.test_privacy import assert_no_disk_writes
from tests.test_privacy_analysis import CONTROL_NOTE, EXIF_TEXT, FILE_NAME, _found, _pdf_texts, upload  # noqa: F401
from calibration.followup_noise import main as noise_main, noise_pairs, same_lesion_pairs

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = Path(os.environ.get("LESIONLENS_WEIGHTS") or REPO / "weights")
N_PAIRS = 16


@pytest.fixture(scope="module")
def analyzer():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the dashboard does: one image at a time is fastest on a busy 2-core machine
    yield Analyzer.load(WEIGHTS)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def band():
    found, why = load_band(WEIGHTS / BAND_FILE, load_card(WEIGHTS))
    assert found is not None, why
    return found


@pytest.fixture(scope="module")
def test_pairs(ham_split):
    """N_PAIRS same-lesion pairs of the held-out TEST split, and for each baseline a test image of another diagnosis."""
    test = ham_split[ham_split["split"] == "test"]
    same = same_lesion_pairs(test, N_PAIRS, seed=1)
    rng = np.random.default_rng(1)
    different = []
    for baseline, _ in same:
        others = test[test["dx"] != baseline["dx"]]
        different.append((baseline, others.iloc[int(rng.integers(len(others)))]))
    return same, different


def _compare(analyzer, band, pairs):
    return [compare_images(analyzer, load_image_file(a["image_path"]), load_image_file(b["image_path"]), band)
            for a, b in pairs]


@pytest.fixture(scope="module")
def outcomes(analyzer, band, test_pairs):
    same, different = test_pairs
    return _compare(analyzer, band, same), _compare(analyzer, band, different)


# ---------------------------------------------------------------- (a) same lesion inside the band, other lesions not
def _beyond_band(comparison) -> int:
    """Scale-free changes (shape, colours, probabilities) larger than their band, whatever the page reports."""
    return sum(c.change is not None and c.band is not None and not c.measure.relative and abs(c.change) > c.band
               for c in comparison.changes)


def test_same_lesion_mostly_within_band_different_lesions_not(outcomes):
    same, different = outcomes
    beyond_same = [len(c.beyond_noise()) for c in same]
    assessed_same = [sum(change.assessable for change in c.changes) for c in same]
    # a 95th-percentile band: about 1 in 20 same-lesion changes is expected beyond it, not more than a few per pair
    assert sum(b <= 2 for b in beyond_same) >= 0.8 * N_PAIRS, beyond_same
    assert np.mean([b / n for b, n in zip(beyond_same, assessed_same)]) <= 0.15, (beyond_same, assessed_same)
    # the band separates: two different lesions (other diagnosis) have more scale-free changes beyond it
    raw_same, raw_different = [_beyond_band(c) for c in same], [_beyond_band(c) for c in different]
    assert sum(b >= 2 for b in raw_different) >= N_PAIRS / 2 and sum(raw_different) > sum(raw_same), raw_different
    # different lesions do not register, so the page reports no change for them: "may not be the same lesion"
    assert not any(c.registration.registered for c in different)
    for comparison in different:
        assert comparison.lesion_doubt and comparison.beyond_noise() == []
        assert comparison.verdict().startswith("These may not be the same lesion")
        assert all(c.status in (NOT_COMPARED, NOT_ASSESSED, NO_LESION) for c in comparison.changes)
        assert all(row[3] == "—" for row in table_text(comparison.changes) if row[5] == NOT_COMPARED)
    # most photos of one lesion register, and those are compared
    assert sum(c.registration.registered for c in same) >= 0.75 * N_PAIRS
    assert all(not c.lesion_doubt and NOT_COMPARED not in {x.status for x in c.changes}
               for c in same if c.registration.registered)


def test_a_probability_band_wider_than_a_quarter_is_called_uninformative(outcomes, band):
    wide = {key for key, entry in band["measurements"].items()
            if key.startswith("p_") and entry["band"] > UNINFORMATIVE_PROBABILITY_BAND}
    assert "p_mel" in wide and "p_vasc" not in wide  # the shipped band: P(mel) +-42 pp, P(vasc) +-4 pp
    registered = [c for c in outcomes[0] if c.registration.registered]
    for comparison in registered:
        rows = dict(zip((c.measure.key for c in comparison.changes), table_text(comparison.changes)))
        statuses = {c.measure.key: c.status for c in comparison.changes}
        assert {k for k in statuses if statuses[k] == UNINFORMATIVE} == wide
        assert rows["p_mel"][4].endswith("(uninformative)") and rows["p_vasc"][5] in (WITHIN, BEYOND)
        assert not any(c.measure.key in wide for c in comparison.beyond_noise())


def test_band_file_is_for_the_shipped_weights(band, tmp_path):
    assert band["quantile"] == 0.95 and 100 <= band["n_pairs"] <= 400
    assert set(band["measurements"]) == {m.key for m in MEASURES}
    for entry in band["measurements"].values():
        assert entry["band"] == entry["quantiles"]["0.95"] >= entry["quantiles"]["0.5"] >= 0
    # another weights version, a missing and a broken file: no band, and a reason
    card = load_card(WEIGHTS)
    assert load_band(WEIGHTS / BAND_FILE, replace(card, version="another"))[0] is None
    missing, why = load_band(tmp_path / BAND_FILE, card)
    assert missing is None and "calibration.followup_noise" in why
    (tmp_path / BAND_FILE).write_text("{not json")
    assert "unreadable" in load_band(tmp_path / BAND_FILE, card)[1]


def test_noise_cli_uses_train_and_val_only(data_dir, tmp_path, capsys):
    out = tmp_path / "noise.json"
    assert noise_main(["--data-dir", str(data_dir), "--weights", str(WEIGHTS), "--out", str(out),
                       "--max-pairs", "3"]) == 0
    written = json.loads(out.read_text())
    card = load_card(WEIGHTS)
    assert written["n_pairs"] == 3 and written["weights_version"] == card.version
    assert written["weights_fingerprint"] == weights_fingerprint(card)
    assert "train + validation" in written["images"]
    assert load_band(out, card)[0] is not None


def test_noise_pairs_are_distinct_train_val_images_of_one_lesion(ham_split):
    pairs = noise_pairs(ham_split, 10_000, seed=42)  # every lesion there is
    train_val = ham_split[ham_split["split"].isin(["train", "val"])]
    repeated = (train_val["lesion_id"].value_counts() > 1).sum()
    assert repeated - 1 <= len(pairs) <= repeated  # one lesion is a byte-identical duplicate pair only
    assert len({a["lesion_id"] for a, _ in pairs}) == len(pairs)
    assert all(a["lesion_id"] == b["lesion_id"] and a["image_id"] != b["image_id"] for a, b in pairs)
    assert {a["split"] for a, _ in pairs} | {b["split"] for _, b in pairs} <= {"train", "val"}
    again = noise_pairs(ham_split, 50, seed=42)
    assert [(a["image_id"], b["image_id"]) for a, b in again] == [(a["image_id"], b["image_id"]) for a, b in pairs[:50]]


# ---------------------------------------------------------------- (b) registration
@pytest.mark.parametrize("folder, pixels", [("images", 1), ("fullres/images", 1), ("images", 2),
                                            ("fullres/images", 0.5)])
def test_registration_recovers_a_known_similarity(data_dir, folder, pixels):
    """The follow-up: the baseline rotated 12 deg, scaled 0.8 and shifted, with `pixels` times as many pixels a side."""
    path = sorted((data_dir / "ham10000" / folder).glob("*.jpg"))[7]
    baseline = load_image_file(path)
    height, width = baseline.shape[:2]
    angle, scale, shift = 12.0, 0.8, (0.04 * width, -0.03 * height)
    forward = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)  # baseline -> follow-up
    forward[:, 2] += shift
    forward *= pixels
    followup = cv2.warpAffine(baseline, forward, (round(width * pixels), round(height * pixels)))
    found = register(baseline, followup, np.zeros((height, width), np.uint8), np.zeros(followup.shape[:2], np.uint8))
    assert found.registered, found.reason
    # follow-up -> baseline is the inverse: scale 1 / (0.8 pixels), and cv2's positive angle turns counter-clockwise
    assert found.scale == pytest.approx(1 / (scale * pixels), rel=0.02)
    assert found.rotation_deg == pytest.approx(angle, abs=1.0)
    inverse = cv2.invertAffineTransform(forward)
    points = np.array([[0.25, 0.25, 1], [0.75, 0.5, 1], [0.5, 0.75, 1]]) * [*followup.shape[1::-1], 1]  # follow-up px
    error = np.abs(points @ found.matrix.T - points @ inverse.T).max()
    assert error < 0.01 * width, error


def test_registration_falls_back_and_says_so(analyzer, data_dir):
    images = sorted((data_dir / "ham10000" / "images").glob("*.jpg"))
    baseline = load_image_file(images[0])
    blank = np.full_like(baseline, (205, 160, 150))
    for followup in (blank, load_image_file(images[500])):
        comparison = compare_images(analyzer, baseline, followup)
        registration = comparison.registration
        assert registration.method == LESION_MASKS and registration.reason
        assert "failed" in registration.describe() and "could not be registered" in comparison.size_note
        assert all(c.status in (NOT_ASSESSED, NO_LESION) for c in comparison.changes if c.measure.relative)
    # the mask fallback puts the follow-up lesion's centroid on the baseline's and matches the areas
    base_mask = np.zeros((150, 200), np.uint8)
    cv2.circle(base_mask, (60, 50), 20, 255, -1)
    follow_mask = np.zeros((150, 200), np.uint8)
    cv2.circle(follow_mask, (140, 100), 40, 255, -1)
    fallback = register(blank[:150, :200], blank[:150, :200], base_mask, follow_mask)
    assert fallback.method == LESION_MASKS and fallback.scale == pytest.approx(0.5, rel=0.03)
    assert fallback.matrix @ np.array([140, 100, 1]) == pytest.approx([60, 50], abs=1.0)


def test_only_a_lesion_cut_by_the_image_edge_counts_as_cut():
    mask = np.zeros((150, 200), np.uint8)
    cv2.circle(mask, (100, 75), 30, 255, -1)
    assert not touches_edge(mask)
    mask[147:, :3] = 255  # a speck in the corner is not the measured lesion
    assert not touches_edge(mask)
    cv2.circle(mask, (180, 75), 45, 255, -1)  # the largest component now runs off the right edge
    assert touches_edge(mask)


# ---------------------------------------------------------------- (c) the Compare page
def _run_page(monkeypatch, data_dir, weights=WEIGHTS) -> AppTest:
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    monkeypatch.setenv("LESIONLENS_WEIGHTS", str(weights))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=180)
    at.run()
    at.switch_page("app_pages/compare.py")
    at.run()
    assert not at.exception, at.exception
    return at


def _upload(at: AppTest, pair) -> AppTest:
    for index, row in enumerate(pair):
        path = Path(row["image_path"])
        at.file_uploader(key=f"compare_upload_{index}").set_value((path.name, path.read_bytes(), "image/jpeg"))
    at.run()
    assert not at.exception, at.exception
    return at


def _shown(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in [*at.markdown, *at.caption, *at.success, *at.warning, *at.info, *at.error])


def test_compare_page_with_two_real_images(monkeypatch, data_dir, test_pairs, band):
    same, _ = test_pairs
    at = _upload(_run_page(monkeypatch, data_dir), same[0])
    # red boxes are only the images' own "Refer" verdicts, never a failure
    assert all(e.value.startswith(("**Baseline: Refer.**", "**Follow-up: Refer.**")) for e in at.error), \
        [e.value for e in at.error]
    text = _shown(at)
    assert "Registered by feature matching" in text or "These may not be the same lesion" in text
    assert ("No-change band: 95th percentile of |change| between two images of one lesion, over "
            f"{band['n_pairs']} HAM10000 lesions") in text
    table = at.table[0].value
    assert list(table.columns) == list(TABLE_COLUMNS) and len(table) == len(MEASURES)
    assert set(table["Assessment"]) <= {WITHIN, BEYOND, NOT_ASSESSED, UNINFORMATIVE, NOT_COMPARED}
    assert (UNINFORMATIVE in set(table["Assessment"])) == (NOT_COMPARED not in set(table["Assessment"]))
    assert len(at.image) >= 3  # baseline, follow-up, overlay
    assert [b.proto.label for b in at.get("download_button")] == ["Download comparison report (PDF)"]
    # a field of view adds millimetres; a broken follow-up gets a message and the page keeps serving
    at.number_input(key="compare_fov_mm").set_value(15.0).run()
    assert "mm²" in at.table[0].value["Baseline"].iloc[0]
    at.file_uploader(key="compare_upload_1").set_value(("follow.jpg", b"not an image", "image/jpeg")).run()
    assert not at.exception, at.exception
    assert any("Cannot analyse the follow-up image" in e.value for e in at.error)


def test_compare_page_without_band_says_so(monkeypatch, data_dir, test_pairs, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    for path in WEIGHTS.iterdir():
        if path.name != BAND_FILE:
            (weights / path.name).symlink_to(path)
    at = _run_page(monkeypatch, data_dir, weights)
    at.radio(key="compare_mode").set_value("Dataset pair (same lesion)").run()
    at.button(key="pair_pick").click().run()
    assert not at.exception, at.exception
    assert at.session_state["compare_pair"]["split"] == "test"
    assert any("No-change band unavailable" in w.value for w in at.warning), [w.value for w in at.warning]
    assert set(at.table[0].value["Assessment"]) <= {"no band", "not assessed"}


# ---------------------------------------------------------------- (d) PDF
def test_comparison_pdf_holds_the_change_table(outcomes, test_pairs, band):
    comparison = outcomes[0][0]
    baseline_row, followup_row = test_pairs[0][0]
    baseline, followup = load_image_file(baseline_row["image_path"]), load_image_file(followup_row["image_path"])
    panels = [("baseline", contours(baseline, comparison.baseline.mask, BASELINE_COLOUR)),
              ("follow-up", contours(followup, comparison.followup.mask, FOLLOWUP_COLOUR)),
              ("overlay", contours(baseline, comparison.baseline.mask, BASELINE_COLOUR,
                                   comparison.followup_mask_on_baseline))]
    pdf = build_comparison_pdf(
        panels=panels, comparison=comparison, band_available=True, band_text="95th percentile", mm_per_pixel=0.05,
        model_info={"version": "v-test", "created": "today"}, clinician_note="interval 6 months")
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Subtype /Image") == 3
    text = pdf_text(pdf)
    assert COMPARISON_TITLE in text and "v-test" in text and "interval 6 months" in text
    for column in TABLE_COLUMNS:
        assert column in text
    for row in table_text(comparison.changes, 0.05):
        for cell in row:  # every cell, as the PDF's ASCII spells it
            assert cell.replace("²", "2").replace("±", "+/-").replace("—", "-") in text, cell
    assert "mm2" in text and "ISIC_" not in text  # millimetres; no file names or image ids
    assert comparison.verdict().split(":")[0] in text


def test_comparison_writes_nothing_and_its_pdf_carries_no_upload_metadata(analyzer, upload, data_dir, tmp_path):
    """Two uploads (one with an identifying EXIF block and file name) -> comparison -> PDF, as the page does."""
    other = sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[1].read_bytes()

    def compare_and_report() -> bytes:
        baseline, followup = load_image(upload, FILE_NAME), load_image(other, "follow-up.jpg")
        comparison = compare_images(analyzer, baseline, followup)
        panels = [("baseline", baseline), ("follow-up", followup)]
        return build_comparison_pdf(panels=panels, comparison=comparison, band_available=False, band_text="none",
                                    mm_per_pixel=None, model_info={}, clinician_note=CONTROL_NOTE)

    texts = _pdf_texts(compare_and_report())
    assert _found(texts, CONTROL_NOTE), "the search does not reach the compressed page content"
    leaks = [needle for needle in (*EXIF_TEXT.values(), FILE_NAME, FILE_NAME.rsplit(".", 1)[0], "884213")
             if _found(texts, needle)]
    assert not leaks and not any(b"Exif\x00\x00" in t for t in texts), leaks
    assert_no_disk_writes(compare_and_report, tmp_path / "tmp")
