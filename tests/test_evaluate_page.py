"""The "Evaluate your data" page (AppTest, shipped weights, real images): on a one-folder-per-class folder of real
held-out test images plus one broken file it shows the numbers `python -m calibration.evaluate --data-dir DIR --weights
weights --report OUT` writes, lists the bad file, and a Cancel reports the images done so far."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from apptest_support import WEIGHTS, class_folder, dataframe, metric_deltas, metrics, page, texts

EVALUATE = "app_pages/evaluate.py"
PER_CLASS = 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory, data_dir, clinical_photo):
    """The class folder plus a camera photo filed as a melanoma: refused, so counted and listed apart."""
    import shutil

    root = class_folder(tmp_path_factory.mktemp("mine") / "images", data_dir, PER_CLASS)
    shutil.copy(clinical_photo, root / "mel" / "camera_photo.jpg")
    return root


@pytest.fixture(scope="module")
def cli_report(folder, tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("report")
    env = {**os.environ, "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "calibration.evaluate", "--data-dir", str(folder), "--weights",
                           str(WEIGHTS), "--report", str(out)], cwd=repo_root, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), pd.read_csv(out / "predictions.csv", dtype={"image_id": str})


def _start(at, folder):
    at = page(at, EVALUATE)
    at.text_input(key="eval_folder").set_value(str(folder)).run()
    at.button(key="eval_start").click().run()
    assert not at.exception, at.exception
    return at


def test_the_page_shows_the_cli_reports_numbers(app, folder, cli_report, downloads):
    report, cli_predictions = cli_report
    at = _start(app, folder)
    _same_figures(at.session_state["folder_run"]["evaluation"].summary, report)
    shown, deltas = metrics(at), metric_deltas(at)
    ci = report["classification"]["ci"]
    # the refused camera photo is not among the images evaluated (the figures leave it out)
    assert shown["Images evaluated"] == str(report["n_images"]) == str(7 * PER_CLASS)
    assert report["classification"]["n"] == report["n_images"]
    assert shown["Failed"] == str(report["n_failed"]) == "1"
    # the refused camera photo: counted, listed with its label and reason, its melanoma named beside the referral
    assert shown["No automated assessment"] == str(report["n_not_dermoscopy"]) == "1"
    refused = dataframe(at, "Why")
    assert list(refused["Image"]) == ["camera_photo"] and list(refused["True label"]) == ["mel"]
    assert "1 melanoma(s) given no automated assessment are not in these figures" in texts(at)
    assert [r["image_id"] for r in report["refused"]] == ["camera_photo"] and report["n_melanoma_refused"] == 1
    assert sum(v["support"] for v in report["classification"]["per_class"].values()) == 7 * PER_CLASS
    assert shown["Balanced accuracy"] == f"{ci['balanced_accuracy']['value']:.1%}"
    low, high = ci["balanced_accuracy"]["ci95"]
    assert deltas["Balanced accuracy"] == f"95% CI {low:.1%} to {high:.1%}"
    assert shown["Macro AUC"] == f"{ci['macro_auc']['value']:.3f}"
    low, high = ci["macro_auc"]["ci95"]
    assert deltas["Macro AUC"] == f"95% CI {low:.3f} to {high:.3f}"
    per_class = dataframe(at, "Support")
    assert list(per_class["Support"]) == [v["support"] for v in report["classification"]["per_class"].values()]
    failures = dataframe(at, "error")
    assert list(failures["image_id"]) == ["broken"] and failures["error"].iloc[0]
    # the confusion matrix is the report's, its cells open the folder's images; ROC and reliability are drawn
    at.toggle(key="eval_cm_norm").set_value(False).run()
    matrix = [c for c in at.get("plotly_chart") if c.proto.id.endswith("eval_cm_chart")]
    assert [[int(v) for v in row] for row in json.loads(matrix[0].proto.spec)["data"][0]["z"]] == \
        report["classification"]["confusion_matrix"]
    at.selectbox(key="eval_cm_true").set_value("nv").run()
    at.selectbox(key="eval_cm_pred").set_value("nv").run()
    n_cell = report["classification"]["confusion_matrix"][5][5]
    assert f"**{n_cell} image(s): true Melanocytic nevus, predicted Melanocytic nevus**" in texts(at)
    assert len(at.image) == n_cell
    assert {"eval_roc_chart", "eval_calibration_chart"} <= {c.proto.id.rsplit("-", 1)[1] for c in at.get("plotly_chart")}
    # the CSV download holds the CLI's predictions
    rows = pd.read_csv(io.BytesIO(downloads["lesionlens_evaluation.csv"]), dtype={"image_id": str})
    pd.testing.assert_frame_equal(rows[["image_id", "dx", "pred", "refer", "triage"]].fillna(""),
                                  cli_predictions[["image_id", "dx", "pred", "refer", "triage"]].fillna(""))
    assert rows.set_index("image_id").loc["camera_photo", "triage"] == "not_assessed"
    assert not at.exception, at.exception


def _same_figures(page: dict, cli: dict) -> None:
    """The page's summary is the CLI's (counts exactly; figures up to the float noise of another torch thread count:
    the test process may have run torch with 2 threads before, the CLI runs with 1)."""
    counts = ("n_images", "n_failed", "n_not_dermoscopy", "refused", "n_melanoma_refused", "cancelled", "model_version")
    assert {k: page[k] for k in counts} == {k: cli[k] for k in counts}
    ours, theirs = page["classification"], cli["classification"]
    assert ours["confusion_matrix"] == theirs["confusion_matrix"]
    for key in ("accuracy", "balanced_accuracy", "top2_accuracy", "macro_auc"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    for key, entry in theirs["ci"].items():
        assert ours["ci"][key]["value"] == pytest.approx(entry["value"], abs=1e-6), key
        assert ours["ci"][key]["ci95"] == pytest.approx(entry["ci95"], abs=1e-3), key
    assert {c: v["support"] for c, v in ours["per_class"].items()} == {c: v["support"] for c, v in theirs["per_class"].items()}
    assert page["referral"] == pytest.approx(cli["referral"], abs=1e-6)


def test_bad_folders_get_a_message(app, tmp_path):
    at = page(app, EVALUATE)
    for value, message in ((str(tmp_path / "missing"), "is not a folder"), (str(tmp_path), "Cannot read the folder")):
        at.text_input(key="eval_folder").set_value(value).run()
        at.button(key="eval_start").click().run()
        assert not at.exception, at.exception
        assert any(message in e.value for e in at.error), [e.value for e in at.error]
        assert "folder_run" not in at.session_state


def test_cancel_reports_the_images_done(app, folder, monkeypatch):
    """The user stops the page while the sixth image is analysed (the run ends there, as when a click interrupts
    it), then presses Cancel: the two chunks done are reported, marked cancelled."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    from core.analysis.inference import Analyzer

    calls = []
    real = Analyzer.analyze

    def analyze(self, rgb, *args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise StopException()
        return real(self, rgb, *args, **kwargs)

    monkeypatch.setattr(Analyzer, "analyze", analyze)
    at = _start(app, folder)
    run = at.session_state["folder_run"]
    assert run["evaluation"] is None and run["done"] == 4
    assert at.button(key="eval_cancel").proto.label == "Cancel"
    at.button(key="eval_cancel").click().run()
    assert not at.exception, at.exception
    summary = at.session_state["folder_run"]["evaluation"].summary
    assert summary["cancelled"] and summary["n_images"] + summary["n_not_dermoscopy"] + summary["n_failed"] == 4
    assert any(w.value.startswith("**Cancelled.**") and "4 of 16 images" in w.value for w in at.warning)
    assert len(calls) == 6  # nothing analysed after the cancel
