"""Image-quality checks (core.decisions.image_quality) on real dermoscopy images.

The shipped card keeps only the checks whose flagged images were misclassified more often on held-out data
(calibration.fit_image_quality). The surfaces are tested with a weights folder whose card ships the out-of-focus check
at its fitted threshold (the same networks, symlinked), whether or not the shipped card keeps it: a sharp image passes,
the same image blurred (cv2.GaussianBlur) is flagged "out of focus" on every surface (Analyzer, Analyze page, PDF, Batch
table and CSV, core.analysis.predict) with its diagnosis still shown, greyed; a refused clinical photo gets no quality verdict
(no analysis at all)."""
from __future__ import annotations

import csv
import io

import cv2
import numpy as np
import pytest
from apptest_support import dataframe, keyed_block, page, upload
from test_app_rules import pdfs  # noqa: F401 (fixture)
from test_report import pdf_text

from calibration.fit_image_quality import BLUR_SHARE
from core.decisions.image_quality import (CHECK_KINDS, QualityCheck, QualityChecks, WORKING_SIZE, border_share,
                                          lesion_share, quality_sentence, sharpness, working_view)

ANALYZE, BATCH = "app_pages/analyze.py", "app_pages/batch.py"


@pytest.fixture(scope="module")
def sharp_path(data_dir):
    """A full-resolution (600x450) HAM10000 original that passes every shipped check."""
    return sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def blurred_png(sharp_path, tmp_path_factory):
    rgb = cv2.imread(str(sharp_path))
    path = tmp_path_factory.mktemp("blur") / f"{sharp_path.stem}_blurred.png"
    cv2.imwrite(str(path), cv2.GaussianBlur(rgb, (0, 0), BLUR_SHARE * rgb.shape[1]))  # the fit's blur
    return path


@pytest.fixture(scope="module")
def out_of_focus_weights(tmp_path_factory, repo_root):
    """A weights folder: the shipped files, and the shipped card with the out-of-focus check at its fitted threshold."""
    import json

    folder = tmp_path_factory.mktemp("weights")
    shipped = repo_root / "weights"
    for path in shipped.iterdir():
        if path.name != "model_card.json":
            (folder / path.name).symlink_to(path)
    card = json.loads((shipped / "model_card.json").read_text())
    fitted = card["image_quality"]["checks"]["out_of_focus"]["threshold"]
    card["image_quality"]["thresholds"] = {"out_of_focus": fitted}
    (folder / "model_card.json").write_text(json.dumps(card))
    return folder


@pytest.fixture(scope="module")
def analyzer(out_of_focus_weights):
    from core.analysis.inference import Analyzer

    return Analyzer.load(out_of_focus_weights)


@pytest.fixture
def app_with_out_of_focus(monkeypatch, out_of_focus_weights, data_dir):
    from apptest_support import start_app

    monkeypatch.setenv("LESIONLENS_WEIGHTS", str(out_of_focus_weights))
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    return start_app(data_dir)


def _analyse(analyzer, path):
    from core.io.intake import load_image_file

    return analyzer.analyze(load_image_file(path))


def test_the_card_keeps_only_checks_with_a_measured_consequence(weights_card):
    entry = weights_card["image_quality"]
    assert set(entry["checks"]) == set(CHECK_KINDS) and entry["cost_ms"]["median"] <= 5
    for name, check in entry["checks"].items():
        measured = [check[f"test_{entry['held_out_predictions']}"]] + (
            [check["test_blurred_pred_shipped"]] if name == "out_of_focus" else [])
        assert check["kept"] == any(m["error_excess_ci95"][0] > 0 for m in measured)
        assert (name in entry["thresholds"]) == check["kept"]


def test_measures_follow_what_they_name():
    gray = np.full(WORKING_SIZE, 180, np.uint8)
    gray[::8] = 60  # stripes: sharp
    mask = np.zeros((450, 600), np.uint8)
    mask[100:200, 200:300] = 255
    rgb = np.repeat(cv2.resize(gray, (600, 450), interpolation=cv2.INTER_NEAREST)[:, :, None], 3, axis=2)
    view = working_view(rgb, mask, (0, 450, 0, 600))
    blurred = working_view(cv2.GaussianBlur(rgb, (0, 0), BLUR_SHARE * 600), mask, (0, 450, 0, 600))
    assert sharpness(blurred) < 0.1 * sharpness(view)
    assert lesion_share(view) == pytest.approx(100 * 100 / (450 * 600), rel=0.05) and border_share(view) == 0
    mask[:, :60] = 255  # a band along the left edge: the frame's left column and 20 of 200 px of its top and bottom
    assert border_share(working_view(rgb, mask, (0, 450, 0, 600))) == pytest.approx((148 + 2 * 20) / (2 * 200 + 2 * 148))


def test_a_check_is_built_only_from_what_it_knows(card_with):
    with pytest.raises(ValueError, match="unknown image-quality check"):
        QualityCheck("too_pretty", 1.0)
    with pytest.raises(ValueError, match="not a number"):
        QualityCheck("out_of_focus", float("nan"))
    assert QualityChecks.from_card(card_with(image_quality={"thresholds": {}})).checks == []
    assert [c.name for c in QualityChecks.from_card(card_with(image_quality={"thresholds": {"heavy_hair": 0.3}})).checks] \
        == ["heavy_hair"]
    assert quality_sentence(()) == ""
    assert quality_sentence(("out_of_focus", "lesion_cut_by_border")).startswith(
        "It looks out of focus and the lesion runs off the edge of the picture:")


def test_analyzer_flags_the_blurred_image_and_passes_the_sharp_one(analyzer, sharp_path, blurred_png):
    sharp, blurred = _analyse(analyzer, sharp_path), _analyse(analyzer, blurred_png)
    assert sharp.quality == () and sharp.quality_text == "" and not sharp.greyed
    assert "out_of_focus" in blurred.quality and blurred.greyed and blurred.diagnosis_shown
    assert blurred.quality_text.startswith("It looks out of focus")
    assert blurred.triage.level in ("refer", "review") and blurred.label in blurred.probs


def test_a_refused_image_gets_no_quality_verdict(analyzer, clinical_photo):
    result = _analyse(analyzer, clinical_photo)
    assert result.ood_level == "clinical_photo" and result.quality == () and result.quality_text == ""


def test_core_predict_lists_the_checks_that_fired(analyzer, sharp_path, blurred_png, tmp_path):
    from core.analysis.predict import predict_one

    assert predict_one(analyzer, sharp_path, tmp_path)["quality"] == ""
    row = predict_one(analyzer, blurred_png, tmp_path)
    assert "out_of_focus" in row["quality"].split("|") and row["pred"] != "" and row["error"] == ""


def test_analyze_page_pdf_and_batch_say_which_check_fired(app_with_out_of_focus, pdfs, downloads, sharp_path,
                                                          blurred_png):
    at = page(app_with_out_of_focus, ANALYZE)
    upload(at, "upload", (blurred_png.name, blurred_png.read_bytes(), "image/png"))
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning if w.value.startswith("**Image quality.**")]
    assert len(warnings) == 1 and "out of focus" in warnings[0]
    block = keyed_block(at, "unusual_diagnosis")  # the greyed container: the diagnosis is still there
    assert block is not None and any(m.value.startswith("### ") for m in block.markdown)
    at.button(key="pdf_prepare").click().run()
    assert "Image quality: It looks out of focus" in pdf_text(pdfs[-1]) and "Most likely" in pdf_text(pdfs[-1])

    at = page(at, BATCH)
    upload(at, "batch_upload", [(blurred_png.name, blurred_png.read_bytes(), "image/png"),
                                (sharp_path.name, sharp_path.read_bytes(), "image/jpeg")])
    at.button(key="batch_run").click().run()
    assert not at.exception, at.exception
    status = dict(zip(dataframe(at, "thumbnail")["file"], dataframe(at, "thumbnail")["status"]))
    assert status[blurred_png.name].startswith("⚠ image quality (out of focus") and status[sharp_path.name] == "✓ analysed"
    rows = {r["image"]: r for r in csv.DictReader(io.StringIO(downloads["lesionlens_batch.csv"].decode("utf-8")))}
    assert "out_of_focus" in rows[blurred_png.stem]["quality"].split("|") and rows[blurred_png.stem]["pred"] != ""
    assert rows[sharp_path.stem]["quality"] == ""



def test_the_test_predictions_triage_column_carries_the_quality_flags(tmp_path, repo_root, card_with):
    """weights/test_predictions.csv's `triage` is the verdict the app gives: an image a quality check flags is
    "review", not "no referral" (calibration.out_of_source used to write the column without the quality flags)."""
    import pandas as pd

    from core.data.classes import CLASS_CODES
    from core.decisions.triage import TriageRule
    from core.decisions.image_quality import MEASURES
    from calibration.fit_image_quality import MEASURES_NAME, measures_folder, write_triage_column

    weights = tmp_path / "weights"
    weights.mkdir()
    shipped = pd.read_csv(repo_root / "weights" / "test_predictions.csv", keep_default_na=False, dtype={"image_id": str})
    shipped.to_csv(weights / "test_predictions.csv", index=False)
    card = card_with(image_quality={"thresholds": {"out_of_focus": 10.0}})
    probs = shipped[[f"p_{c}" for c in CLASS_CODES]].to_numpy(float)
    rule = TriageRule.from_card(card)
    clear = rule.levels(probs, shipped["uncertainty_level"], shipped["ood_level"]) == "no_referral"
    assert clear.sum() >= 2
    blurred = clear & (np.cumsum(clear) % 2 == 1)  # every other clear image is out of focus
    measures = pd.DataFrame({"image_id": shipped["image_id"], **{m: 50.0 for m in MEASURES}})
    measures.loc[blurred, "sharpness"] = 1.0
    folder = measures_folder(card.raw, tmp_path / "measures")
    folder.mkdir(parents=True)
    measures.to_csv(folder / MEASURES_NAME, index=False)
    write_triage_column(weights, card, tmp_path / "measures")
    triage = pd.read_csv(weights / "test_predictions.csv", keep_default_na=False)["triage"].to_numpy()
    assert (triage[blurred] == "review").all() and (triage[clear & ~blurred] == "no_referral").all()
    assert (triage == rule.levels(probs, shipped["uncertainty_level"], shipped["ood_level"], blurred)).all()
