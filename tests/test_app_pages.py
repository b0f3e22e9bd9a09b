"""Every dashboard page rendered headlessly with streamlit.testing.v1.AppTest against the shipped weights and
the real data (DATA_DIR, default <repo>/../shared/data).

The app is started from the entry point (streamlit_app.py, st.navigation) and switched page by page, so the
shared sidebar and navigation are exercised as users see them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from streamlit.testing.v1 import AppTest

from core.classes import CLASS_BY_CODE, CLASS_CODES, CLASSES

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "streamlit_app.py")
TIMEOUT = 180
CLASS_NAMES = [c.name for c in CLASSES]


WEIGHTS = Path(os.environ.get("LESIONLENS_WEIGHTS") or REPO / "weights")  # same rule as app_support


@pytest.fixture(scope="module")
def weights_card():
    from core.weights_io import read_model_card

    path = WEIGHTS / "model_card.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the dashboard tests need the shipped weights (train + evaluate first)",
                    pytrace=False)
    return read_model_card(WEIGHTS)


@pytest.fixture
def app(monkeypatch, data_dir):
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def _page(at: AppTest, path: str) -> AppTest:
    at.switch_page(path)
    at.run()
    assert not at.exception, at.exception
    return at


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [t.value for t in at.title]
    parts += [s.value for s in at.subheader] + [h.value for h in at.header]
    return "\n".join(str(p) for p in parts)


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _dataframe(at: AppTest, column: str):
    """The first st.dataframe / st.table that has `column`."""
    frames = [frame.value for frame in list(at.dataframe) + list(at.table)]
    for frame in frames:
        if column in frame.columns:
            return frame
    raise AssertionError(f"no dataframe with column {column!r}; have {[list(f.columns) for f in frames]}")


def _check_analysis(at: AppTest, true_code: str | None = None) -> str:
    """The analysis block: predicted label heading, the 7-bar chart, measurements; returns the predicted code."""
    assert not at.error, [e.value for e in at.error]
    headings = [m.value for m in at.markdown if m.value.startswith("### ")]
    assert headings, "no prediction heading"
    match = re.match(r"### (.+) \((\w+)\)$", headings[0])
    assert match and match.group(2) in CLASS_CODES, headings[0]
    code = match.group(2)
    assert match.group(1) == CLASS_BY_CODE[code].name
    metrics = _metrics(at)
    probability = float(metrics["Probability"].rstrip("%")) / 100
    assert 1 / 7 <= probability <= 1.0
    assert 0.0 <= float(metrics["Uncertainty"]) <= 1.0
    # plotly bar chart of all 7 probabilities, full class names, summing to 1
    import json

    charts = [c for c in at.get("plotly_chart")]
    spec = None
    for chart in charts:
        figure = json.loads(chart.proto.spec)
        if figure["data"] and figure["data"][0].get("type") == "bar" and figure["data"][0].get("orientation") == "h":
            spec = figure
    assert spec is not None, "probability chart missing"
    bar = spec["data"][0]
    assert len(bar["x"]) == 7 and abs(sum(bar["x"]) - 1.0) < 1e-3
    assert max(bar["x"]) == pytest.approx(probability, abs=6e-4)
    ticks = " ".join(spec["layout"]["yaxis"]["ticktext"])
    assert all(name in ticks for name in CLASS_NAMES), ticks
    assert ticks.count("malignant") == 3
    # measurements table
    table = _dataframe(at, "Measurement")
    values = dict(zip(table["Measurement"], table["Value"]))
    assert "Area" in values and "Max diameter" in values and "Asymmetry (0 = symmetric)" in values
    if "no lesion" not in values.get("Lesion", ""):
        assert re.match(r"[\d,]+ px", values["Area"]), values["Area"]
    # downloads: PDF report and mask PNG
    labels = [b.proto.label for b in at.get("download_button")]
    assert "PDF report" in labels and "Mask (PNG)" in labels, labels
    if true_code:
        assert f"**{CLASS_BY_CODE[true_code].name} ({true_code})**" in _texts(at)
    return code


# ---------------------------------------------------------------- Home
def test_home_shows_model_summary(app, weights_card):
    text = _texts(app)
    assert "LesionLens" in text
    assert any("not a diagnosis" in w.value for w in app.warning), "disclaimer missing"
    assert weights_card["version"] in text
    acc = weights_card["metrics"]["test"]["classification"]["mask_cn"]["balanced_accuracy"]
    assert _metrics(app)["Balanced accuracy"] == f"{acc:.1%}"
    assert "CPU" in text or "GPU" in text
    assert app.sidebar.text_input(key="data_dir_input").value.endswith("data")


# ---------------------------------------------------------------- Analyze
def test_analyze_dataset_example(app, weights_card):
    at = _page(app, "pages/1_Analyze.py")
    at.radio(key="input_mode").set_value("Dataset example").run()
    assert not at.exception, at.exception
    at.selectbox(key="example_class").set_value("mel").run()
    at.button(key="example_pick").click().run()
    assert not at.exception, at.exception
    _check_analysis(at, true_code="mel")
    assert at.session_state["example"]["dx"] == "mel"
    # the CAM controls cover every method in core.cam and every class
    from core.cam import CAM_METHODS

    assert list(at.selectbox(key="cam_method").options) == list(CAM_METHODS)
    assert len(at.selectbox(key="cam_target").options) == 8
    # switching to the coarse mask re-measures on that mask without errors
    at.segmented_control(key="mask_choice").set_value("coarse").run()
    assert not at.exception, at.exception
    assert "(coarse-SN mask)" in _texts(at)


def test_analyze_upload_real_and_bad_file(app, data_dir):
    at = _page(app, "pages/1_Analyze.py")
    image = sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[0]
    at.file_uploader(key="upload").set_value(("lesion.jpg", b"this is not an image", "image/jpeg")).run()
    assert not at.exception, at.exception
    assert at.error and "Cannot analyse" in at.error[0].value, [e.value for e in at.error]
    # the page keeps working: a real full-resolution upload is analysed next
    at.file_uploader(key="upload").set_value((image.name, image.read_bytes(), "image/jpeg")).run()
    assert not at.exception, at.exception
    _check_analysis(at)
    # a field of view turns the pixel sizes into millimetres
    at.number_input(key="fov_mm").set_value(15.0).run()
    values = dict(zip(*(_dataframe(at, "Measurement")[c] for c in ("Measurement", "Value"))))
    assert " mm" in values["Max diameter"] and "enter field of view" not in values["Max diameter"]


# ---------------------------------------------------------------- Dataset explorer
def test_dataset_explorer_counts(app):
    at = _page(app, "pages/2_Dataset_explorer.py")
    metrics = _metrics(at)
    assert metrics["Images"] == "10,015"
    assert metrics["Lesions"] == "7,470"
    keys = {c.proto.id for c in at.get("plotly_chart")}
    assert len(at.get("plotly_chart")) >= 6, keys  # class, split, age, sex, site, dx_type
    assert len(at.image) >= 12  # gallery
    at.segmented_control(key="x_source").set_value("isic2017").run()
    assert not at.exception, at.exception
    assert _metrics(at)["Images"] == "2,150"


def test_dataset_explorer_without_data_dir_explains(app, weights_card):
    at = app
    at.sidebar.text_input(key="data_dir_input").set_value("").run()
    at = _page(at, "pages/2_Dataset_explorer.py")
    assert any("DATA_DIR" in i.value for i in at.info)
    n = weights_card["dataset_summary"]["all"]["n_images"]
    assert _metrics(at)["Images"] == f"{n:,}"


# ---------------------------------------------------------------- Model performance
def test_model_performance(app, weights_card):
    at = _page(app, "pages/3_Model_performance.py")
    m = weights_card["metrics"]["test"]["classification"]["mask_cn"]
    metrics = _metrics(at)
    assert metrics["Accuracy"] == f"{m['accuracy']:.1%}"
    table = _dataframe(at, "Support")
    assert list(table["Code"]) == list(CLASS_CODES)
    assert list(table["Support"]) == [m["per_class"][c]["support"] for c in CLASS_CODES]
    import json

    cm = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "cm_chart" in c.proto.id][0]
    heat = cm["data"][0]
    assert heat["type"] == "heatmap" and len(heat["z"]) == 7
    # counts view shows the model card's matrix exactly
    at.toggle(key="cm_norm").set_value(False).run()
    cm = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "cm_chart" in c.proto.id][0]
    assert [[int(v) for v in row] for row in cm["data"][0]["z"]] == m["confusion_matrix"]
    # the fallback selectboxes pick a cell; its images are listed with probabilities
    at.selectbox(key="cm_true").set_value("mel").run()
    at.selectbox(key="cm_pred").set_value("mel").run()
    assert not at.exception, at.exception
    n_cell = m["confusion_matrix"][CLASS_CODES.index("mel")][CLASS_CODES.index("mel")]
    assert f"**{n_cell} test image(s): true Melanoma, predicted Melanoma**" in _texts(at)
    if n_cell:
        assert len(at.image) >= 1
    # melanoma operating point from test_predictions.csv via core.metrics
    at.slider(key="mel_threshold").set_value(0.0).run()
    assert _metrics(at)["Sensitivity"] == "100.0%" and _metrics(at)["Specificity"] == "0.0%"
    at.slider(key="mel_threshold").set_value(0.5).run()
    sens = float(_metrics(at)["Sensitivity"].rstrip("%"))
    assert 0 <= sens <= 100
    assert not at.exception, at.exception
    # ablation table: one row per (comparison, metric) of the model card, metric names spelled out
    ablation = weights_card.get("ablation") or []
    if ablation:
        table = _dataframe(at, "comparison")
        assert len(table) == len({(a["comparison"], a["metric"]) for a in ablation})
        assert not any("_" in str(name) for name in table["metric"]), list(table["metric"])


# ---------------------------------------------------------------- Batch
def test_batch_upload_with_a_bad_file(app, data_dir):
    at = _page(app, "pages/4_Batch.py")
    images = sorted((data_dir / "ham10000" / "images").glob("*.jpg"))[:2]
    files = [(p.name, p.read_bytes(), "image/jpeg") for p in images] + [("broken.png", b"\x89PNG\r\n\x1a\nxx", "image/png")]
    at.file_uploader(key="batch_upload").set_value(files).run()
    at.button(key="batch_run").click().run()
    assert not at.exception, at.exception
    table = _dataframe(at, "thumbnail")
    assert list(table["file"]) == [p.name for p in images] + ["broken.png"]
    assert table["status"].iloc[2].startswith("✗ ") and table["prediction"].isna().iloc[2]
    assert (table["status"].iloc[:2] == "✓ analysed").all()
    assert all(str(t).startswith("data:image/png;base64,") for t in table["thumbnail"].iloc[:2])
    probs = table[[f"p_{c}" for c in CLASS_CODES]].iloc[:2].to_numpy(dtype=float)  # shown in percent
    assert abs(probs.sum(axis=1) - 100).max() < 1e-2
    assert all(any(p.startswith(n) for n in CLASS_NAMES) for p in table["prediction"].iloc[:2])
    assert _metrics(at)["Rejected / failed"] == "1"
    assert any("broken.png" in w.value and "Not analysed" in w.value for w in at.warning)
    for column in ("ood", "area_px", "max_diameter_px", "asymmetry", "border_irregularity", "colours"):
        assert column in table.columns and table[column].iloc[:2].notna().all(), column
    assert set(table["ood"].iloc[:2]) <= {"⚠ yes", "no"} and table["ood"].isna().iloc[2]
    assert [b.proto.label for b in at.get("download_button")] == ["Download results (CSV)"]
