"""Every dashboard page rendered headlessly with streamlit.testing.v1.AppTest against the shipped weights and
the real data (DATA_DIR, default <repo>/../shared/data).

The app is started from the entry point (streamlit_app.py, st.navigation) and switched page by page, so the
shared sidebar and navigation are exercised as users see them.
"""
from __future__ import annotations

import json
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


WEIGHTS = Path(os.environ.get("LESIONLENS_WEIGHTS") or REPO / "weights")  # same rule as ui.analyzers


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
    # measurements table in core.lesion_measurements' wording
    table = _dataframe(at, "Measurement")
    values = dict(zip(table["Measurement"], table["Value"]))
    assert list(values) == ["Area", "Maximum diameter (Feret)", "Perimeter", "Mirror asymmetry", "Border irregularity",
                            "Dermoscopic colours", "Lesion fraction of image", "Scale"], list(values)
    assert re.fullmatch(r"[\d,]+ px( · [\d,.]+ mm²)?", values["Area"]), values["Area"]
    assert re.match(r"\d+% of the lesion area does not overlap its mirror image", values["Mirror asymmetry"])
    # downloads: the mask at once; the PDF only once asked for (a button first)
    assert [b.proto.label for b in at.get("download_button")] == ["Mask (PNG)"]
    assert at.button(key="pdf_prepare").proto.label == "Prepare PDF report"
    if true_code:
        assert f"**{CLASS_BY_CODE[true_code].name} ({true_code})**" in _texts(at)
    return code


def _figure(at: AppTest, key: str) -> dict:
    """The plotly figure (JSON) of the chart with this key."""
    charts = [c for c in at.get("plotly_chart") if key in c.proto.id]
    assert charts, f"no chart {key!r}"
    return json.loads(charts[0].proto.spec)


def _values(data) -> list:
    """A figure's data array as a list (plotly writes numeric arrays as base64 typed arrays)."""
    if isinstance(data, dict) and "bdata" in data:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)


def _captions(at: AppTest) -> list[str]:
    return [c for image in at.image for c in image.captions]


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


def test_home_counts_split_images_per_source(app, weights_card, data_dir):
    """Images per split and source (not HAM10000 and ISIC 2017 added up): the model card's counts, which are those of
    the data it was trained on."""
    from core.datasets import load_manifest
    from core.splits import assign_splits

    table = _dataframe(app, "test")
    assert list(table.index) == ["HAM10000", "ISIC 2017"]
    splits = weights_card["dataset_summary"]["splits"]
    assert int(table.loc[:, "train"].sum()) == splits["train"]["n_images"]
    ham = assign_splits(load_manifest(data_dir, sources=("ham10000",)), seed=42)["split"].value_counts()
    for split in ("train", "val", "test"):
        assert table.loc["HAM10000", split] == ham[split], split
        assert table.loc["ISIC 2017", split] == splits[split]["n_images"] - ham[split], split


# ---------------------------------------------------------------- Analyze
def test_analyze_dataset_example(app, weights_card, data_dir):
    at = _page(app, "app_pages/analyze.py")
    at.radio(key="input_mode").set_value("Dataset example").run()
    assert not at.exception, at.exception
    at.selectbox(key="example_class").set_value("mel").run()
    at.button(key="example_pick").click().run()
    assert not at.exception, at.exception
    _check_analysis(at, true_code="mel")
    # examples are held-out test images (three random picks)
    from core.datasets import load_manifest
    from core.splits import assign_splits

    split = assign_splits(load_manifest(data_dir), seed=42).set_index("image_id")["split"]
    picked = [at.session_state["example"]]
    for _ in range(2):
        at.button(key="example_pick").click().run()
        picked.append(at.session_state["example"])
    assert {e["dx"] for e in picked} == {"mel"} and {split[e["image_id"]] for e in picked} == {"test"}, picked
    _check_analysis(at, true_code="mel")
    # the CAM controls offer the methods that differ on mask-CN and every class; each CAM image says what made it
    from core.cam import distinct_class_cams

    assert list(at.selectbox(key="cam_method").options) == distinct_class_cams(linear_head=True)
    assert len(at.selectbox(key="cam_target").options) == 8
    at.selectbox(key="cam_target").set_value("bcc").run()
    at.toggle(key="cam_masked").set_value(True).run()
    assert not at.exception, at.exception
    assert "Grad-CAM · target Basal cell carcinoma (bcc) · lesion mask applied (map kept inside it) " \
           "(red = most influential)" in _captions(at)
    # switching to the coarse mask re-measures on that mask without errors
    at.segmented_control(key="mask_choice").set_value("coarse").run()
    assert not at.exception, at.exception
    assert "(coarse-SN mask)" in _texts(at)
    # another class: the melanoma example and its result go at once, until a new example is picked
    at.selectbox(key="example_class").set_value("nv").run()
    assert not at.exception, at.exception
    assert "example" not in at.session_state
    assert not any(m.value.startswith("### ") for m in at.markdown), "the previous example's result is still shown"


def test_analyze_upload_real_and_bad_file(app, data_dir, monkeypatch):
    import core.report

    built = []
    real_build = core.report.build_pdf_report
    monkeypatch.setattr(core.report, "build_pdf_report", lambda **kw: built.append(kw) or real_build(**kw))
    at = _page(app, "app_pages/analyze.py")
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
    assert values["Maximum diameter (Feret)"].endswith(" mm") and values["Scale"] == f"{15 / 600:.4f} mm per pixel"
    # the PDF is built only when asked for, once; then offered for download
    assert built == [], "the PDF was built without being asked for"
    at.button(key="pdf_prepare").click().run()
    assert not at.exception, at.exception
    assert len(built) == 1 and built[0]["cam_caption"].startswith("Grad-CAM · target ")
    assert [b.proto.label for b in at.get("download_button")] == ["Mask (PNG)", "PDF report"]
    at.text_input(key="report_note").set_value("second look").run()  # new content: asked for again
    assert len(built) == 1 and at.button(key="pdf_prepare").proto.label == "Prepare PDF report"


def test_analyze_accepts_every_format_core_intake_reads(app, data_dir):
    """The file picker lists exactly core.intake's formats; a GIF (which core.intake reads) is analysed."""
    import io

    from PIL import Image

    from core.intake import FILE_EXTENSIONS

    at = _page(app, "app_pages/analyze.py")
    assert list(at.file_uploader(key="upload").proto.type) == [f".{e}" for e in FILE_EXTENSIONS]
    assert ".gif" in at.file_uploader(key="upload").proto.type
    image = sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[0]
    gif = io.BytesIO()
    Image.open(image).convert("P").save(gif, format="GIF")
    at.file_uploader(key="upload").set_value(("lesion.gif", gif.getvalue(), "image/gif")).run()
    assert not at.exception, at.exception
    _check_analysis(at)


# ---------------------------------------------------------------- Dataset explorer
def test_dataset_explorer_counts(app):
    at = _page(app, "app_pages/dataset_explorer.py")
    metrics = _metrics(at)
    assert metrics["Images"] == "10,015"
    assert metrics["Lesions"] == "7,470"
    keys = {c.proto.id for c in at.get("plotly_chart")}
    assert len(at.get("plotly_chart")) >= 6, keys  # class, split, age, sex, site, dx_type
    assert len(at.image) >= 12  # gallery
    at.segmented_control(key="x_source").set_value("isic2017").run()
    assert not at.exception, at.exception
    assert _metrics(at)["Images"] == "2,150"


def test_dataset_explorer_isic_charts_and_metadata_note(app, isic_manifest, data_dir):
    """ISIC 2017: the class chart has a bar for each of its classes with the real counts (no empty category), the
    split chart only train/val/test, and the page says its labels give no age, sex or site (labels.csv has none)."""
    at = _page(app, "app_pages/dataset_explorer.py")
    at.segmented_control(key="x_source").set_value("isic2017").run()
    assert not at.exception, at.exception
    bars = [t for t in _figure(at, "dx_chart")["data"]]
    shown = {_values(t["x"])[0]: _values(t["y"])[0] for t in bars}
    from ui.formatting import short_name

    expected = {short_name(c): n for c, n in isic_manifest["dx"].value_counts().items()}
    assert shown == expected
    split = _figure(at, "split_chart")
    assert {x for t in split["data"] for x in _values(t["x"])} == {"train", "val", "test"}
    labels = (data_dir / "isic2017" / "labels.csv").read_text().splitlines()[0].split(",")
    assert not {"age", "sex", "localization"} & set(labels)
    notes = [i.value for i in at.info]
    assert "The ISIC 2017 labels in the data folder give no age, sex or anatomical site: there is nothing to chart." \
           in notes, notes
    assert not any(k in c.proto.id for c in at.get("plotly_chart") for k in ("age_chart", "sex_chart", "site_chart"))


def test_dataset_explorer_without_data_dir_explains(app, weights_card):
    at = app
    at.sidebar.text_input(key="data_dir_input").set_value("").run()
    at = _page(at, "app_pages/dataset_explorer.py")
    assert any("DATA_DIR" in i.value for i in at.info)
    n = weights_card["dataset_summary"]["all"]["n_images"]
    assert _metrics(at)["Images"] == f"{n:,}"


# ---------------------------------------------------------------- Model performance
def _sensitivity_specificity(table, column: str, threshold: float) -> tuple[str, str]:
    """What the page should show, computed here from the CSV: (sensitivity, specificity) at `threshold`."""
    is_mel = table["dx"] == "mel"
    positive = table[column] >= threshold
    return f"{(positive & is_mel).sum() / is_mel.sum():.1%}", f"{(~positive & ~is_mel).sum() / (~is_mel).sum():.1%}"


def test_model_performance(app, weights_card):
    at = _page(app, "app_pages/model_performance.py")
    m = weights_card["metrics"]["test"]["classification"]["mask_cn"]
    metrics = _metrics(at)
    assert metrics["Accuracy"] == f"{m['accuracy']:.1%}"
    table = _dataframe(at, "Support")
    assert list(table["Code"]) == list(CLASS_CODES)
    assert list(table["Support"]) == [m["per_class"][c]["support"] for c in CLASS_CODES]
    heat = _figure(at, "cm_chart")["data"][0]
    assert heat["type"] == "heatmap" and len(heat["z"]) == 7
    # counts view shows the model card's matrix exactly
    at.toggle(key="cm_norm").set_value(False).run()
    assert [[int(v) for v in row] for row in _figure(at, "cm_chart")["data"][0]["z"]] == m["confusion_matrix"]
    # the fallback selectboxes pick a cell; its images are listed with probabilities
    at.selectbox(key="cm_true").set_value("mel").run()
    at.selectbox(key="cm_pred").set_value("mel").run()
    assert not at.exception, at.exception
    n_cell = m["confusion_matrix"][CLASS_CODES.index("mel")][CLASS_CODES.index("mel")]
    assert f"**{n_cell} test image(s): true Melanoma, predicted Melanoma**" in _texts(at)
    assert len(at.image) == min(n_cell, 6)
    # melanoma operating point: exactly what weights/test_predictions.csv gives at the same threshold
    import pandas as pd

    predictions = pd.read_csv(WEIGHTS / "test_predictions.csv")
    for threshold in (0.0, 0.3, 0.5):
        at.slider(key="mel_threshold").set_value(threshold).run()
        shown = _metrics(at)
        assert (shown["Sensitivity"], shown["Specificity"]) == _sensitivity_specificity(predictions, "p_mel", threshold)
        assert shown["Flagged for review"] == f"{int((predictions['p_mel'] >= threshold).sum())} / {len(predictions)}"
    assert not at.exception, at.exception
    # reliability diagram: the mean-confidence dots sit at each bin's mean confidence (bars at its accuracy)
    bins = [b for b in m["calibration"]["after"]["bins"] if b["count"] > 0]
    traces = [t for t in _figure(at, "calibration_chart")["data"] if t.get("name") == "mean confidence"]
    assert _values(traces[1]["y"]) == pytest.approx([b["confidence"] for b in bins])
    assert _values(traces[1]["x"]) == pytest.approx([(b["lower"] + b["upper"]) / 2 for b in bins])
    assert f"Temperature T = {m['decision_rule']['temperature']:.2f}" in _texts(at)
    # ablation table: one row per (comparison, metric) of the model card, metric names spelled out
    ablation = weights_card.get("ablation") or []
    if ablation:
        table = _dataframe(at, "comparison")
        assert len(table) == len({(a["comparison"], a["metric"]) for a in ablation})
        assert not any("_" in str(name) for name in table["metric"]), list(table["metric"])


def test_model_performance_without_predictions_of_the_selected_model(app):
    """The image-only classifier has no columns in the shipped CSV: the page says so instead of mask-CN's numbers."""
    at = _page(app, "app_pages/model_performance.py")
    at.segmented_control(key="perf_model").set_value("classifier").run()
    assert not at.exception, at.exception
    assert "Sensitivity" not in _metrics(at)
    notes = [i.value for i in at.info if "no per-image predictions of the Image-only classifier" in i.value]
    assert len(notes) == 2, [i.value for i in at.info]  # drill-down and operating point
    assert not any("test image(s): true" in t for t in _texts(at).splitlines())


def test_model_performance_reads_the_selected_models_predictions(tmp_path, monkeypatch, data_dir, weights_card):
    """A predictions CSV with the image-only classifier's columns and a card with its own temperature: with that model
    selected the operating point, the drill-down and the calibration caption are the classifier's."""
    import numpy as np
    import pandas as pd

    weights = tmp_path / "weights"
    weights.mkdir()
    card = json.loads(json.dumps(weights_card))
    card["metrics"]["test"]["classification"]["classifier"]["decision_rule"]["temperature"] = 1.5
    (weights / "model_card.json").write_text(json.dumps(card))
    table = pd.read_csv(WEIGHTS / "test_predictions.csv")
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(CLASS_CODES)), size=len(table))
    table["classifier_pred"] = [CLASS_CODES[i] for i in probs.argmax(1)]
    for j, code in enumerate(CLASS_CODES):
        table[f"classifier_p_{code}"] = probs[:, j]
    table.to_csv(weights / "test_predictions.csv", index=False)
    monkeypatch.setenv("LESIONLENS_WEIGHTS", str(weights))  # no weight files: the drill-down shows no CAMs
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at = _page(at, "app_pages/model_performance.py")
    at.segmented_control(key="perf_model").set_value("classifier").run()
    at.slider(key="mel_threshold").set_value(0.2).run()
    at.selectbox(key="cm_true").set_value("nv").run()
    at.selectbox(key="cm_pred").set_value("bkl").run()
    assert not at.exception, at.exception
    shown = _metrics(at)
    assert (shown["Sensitivity"], shown["Specificity"]) == _sensitivity_specificity(table, "classifier_p_mel", 0.2)
    n = int(((table["dx"] == "nv") & (table["classifier_pred"] == "bkl")).sum())
    assert f"**{n} test image(s): true Melanocytic nevus, predicted Benign keratosis-like lesion**" in _texts(at)
    assert "Temperature T = 1.50" in _texts(at)


def test_confusion_cell_click_opens_its_drill_down():
    """The matrix's clickable layer: every cell has a marker that takes part in hover, so plotly sends its click /
    selection events (a layer with hoverinfo "skip" and no hover template gets none: the old drill-down never opened;
    tests/test_browser.py clicks a cell for real), and a selected point decodes to its (true, predicted) cell."""
    import numpy as np

    from ui.figures import confusion_figure, selected_cell

    fig = confusion_figure(np.arange(49).reshape(7, 7), normalised=True)
    layer = fig.data[1]
    assert layer.type == "scatter" and len(layer.x) == 49
    assert layer.hovertemplate and layer.hoverinfo != "skip"
    assert fig.layout.clickmode == "event+select"
    point = {"x": layer.x[10], "y": layer.y[10]}  # row 1 (bcc), column 3 (df)
    assert selected_cell([point]) == ("bcc", "df")
    assert selected_cell([{"x": "df", "y": "not a class"}]) is None


# ---------------------------------------------------------------- Batch
def test_batch_upload_with_a_bad_file(app, data_dir):
    at = _page(app, "app_pages/batch.py")
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


def test_batch_demo_uses_test_split_images(app, ham_split):
    at = _page(app, "app_pages/batch.py")
    at.number_input(key="batch_n").set_value(10).run()
    at.button(key="batch_examples").click().run()
    assert not at.exception, at.exception
    table = _dataframe(at, "thumbnail")
    assert len(table) == 10 and (table["status"] == "✓ analysed").all()
    split = ham_split.set_index("image_id")["split"]
    assert set(split[table["file"]]) == {"test"}, split[table["file"]].value_counts()
    assert set(CLASS_CODES) <= set(table["true_dx"])  # one per class first
