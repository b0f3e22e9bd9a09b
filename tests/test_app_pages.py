"""Every dashboard page rendered headlessly with streamlit.testing.v1.AppTest against the shipped weights and
the real data (DATA_DIR, default <repo>/../shared/data).

The app is started from the entry point (streamlit_app.py, st.navigation) and switched page by page, so the
shared sidebar and navigation are exercised as users see them.
"""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from apptest_support import (APP, TIMEOUT, WEIGHTS, captions, dataframe, figure, metric_deltas, metrics, page,
                             texts, upload, values)
from streamlit.testing.v1 import AppTest

from core.data.classes import CLASS_BY_CODE, CLASS_CODES, CLASSES
from core.decisions.triage import HEADLINES

CLASS_NAMES = [c.name for c in CLASSES]

VERDICT_STARTS = tuple(f"**{h}.**" for h in HEADLINES.values())


def verdict_shown(at: AppTest) -> str:
    """The text of the one triage verdict alert on the page (core.decisions.triage: refer / review / no referral)."""
    shown = [a.value for a in list(at.error) + list(at.warning) + list(at.info) if a.value.startswith(VERDICT_STARTS)]
    assert len(shown) == 1, shown
    return shown[0]


def check_analysis(at: AppTest, true_code: str | None = None) -> str:
    """The analysis block: predicted label heading, probability, referral, uncertainty in words, the 7-bar chart,
    measurements, similar cases; returns the predicted code."""
    assert not [e.value for e in at.error if not e.value.startswith(VERDICT_STARTS)], [e.value for e in at.error]
    headings = [m.value for m in at.markdown if m.value.startswith("### ")]
    assert headings, "no prediction heading"
    match = re.match(r"### (.+) \((\w+)\)$", headings[0])
    assert match and match.group(2) in CLASS_CODES, headings[0]
    code = match.group(2)
    assert match.group(1) == CLASS_BY_CODE[code].name
    shown = metrics(at)
    probability = float(shown["Probability"].rstrip("%")) / 100
    assert 1 / 7 <= probability <= 1.0
    # uncertainty in words, with its measured error rate; never a bare number
    assert shown["Uncertainty"] in ("low", "moderate", "high")
    sentence = [c.value for c in at.caption if c.value.startswith(f"Uncertainty {shown['Uncertainty']}.")]
    assert sentence and "of the time" in sentence[0], sentence
    # one verdict on top, with the melanoma score and the card's threshold
    text = verdict_shown(at)
    assert re.search(r"Melanoma score [\d.]+; referral threshold [\d.]+ \(the model card's threshold", text), text
    # no benign badge anywhere
    assert "benign class" not in texts(at).lower() and "blue-badge" not in texts(at)
    # plotly bar chart of all 7 probabilities, full class names, summing to 1
    charts = [c for c in at.get("plotly_chart")]
    spec = None
    for chart in charts:
        fig = json.loads(chart.proto.spec)
        if fig["data"] and fig["data"][0].get("type") == "bar" and fig["data"][0].get("orientation") == "h":
            spec = fig
    assert spec is not None, "probability chart missing"
    bar = spec["data"][0]
    assert len(bar["x"]) == 7 and abs(sum(bar["x"]) - 1.0) < 1e-3
    assert max(bar["x"]) == pytest.approx(probability, abs=6e-4)
    ticks = " ".join(spec["layout"]["yaxis"]["ticktext"])
    assert all(name in ticks for name in CLASS_NAMES), ticks
    assert ticks.count("malignant") == 3
    # measurements table in core.lesion.lesion_measurements' wording
    table = dataframe(at, "Measurement")
    found = dict(zip(table["Measurement"], table["Value"]))
    assert list(found) == ["Area", "Maximum diameter (Feret)", "Perimeter", "Mirror asymmetry", "Border irregularity",
                           "Dermoscopic colours", "Dermoscopy score (partial TDS)", "Lesion fraction of image", "Scale"], list(found)
    assert re.fullmatch(r"[\d,]+ px( · [\d,.]+ mm²)?", found["Area"]), found["Area"]
    assert re.match(r"\d+% of the lesion area does not overlap its mirror image", found["Mirror asymmetry"])
    # downloads: the mask at once; the PDF only once asked for (a button first)
    assert [b.proto.label for b in at.get("download_button")] == ["Mask (PNG)"]
    assert at.button(key="pdf_prepare").proto.label == "Prepare PDF report"
    if true_code:
        assert f"**{CLASS_BY_CODE[true_code].name} ({true_code})**" in texts(at)
    return code


# ---------------------------------------------------------------- Home
def test_home_shows_model_summary(app, weights_card):
    """The headline figures of both test sets with their 95 % CIs, read from the card."""
    text = texts(app)
    assert "LesionLens" in text
    assert any("not a diagnosis" in w.value for w in app.warning), "disclaimer missing"
    assert weights_card["version"] in text
    shown = [(m.label, m.value, m.proto.delta) for m in app.metric]
    headline = {k: v for k, v in weights_card["headline"].items() if v}
    held_out = ("Melanomas referred", "'Low uncertainty' wrong", "'Unusual' flag: error ratio",
                "90% prediction sets held the truth")  # the out-of-source figures (ui.out_of_source)
    assert len(shown) == len(headline) + len(held_out) and [m[0] for m in shown[-4:]] == list(held_out)
    pooled = weights_card["out_of_source"]["rules_pooled"]
    assert shown[-4][1] == f"{pooled['refer']['melanoma_sensitivity']['value']:.0%}"
    assert shown[-3][1] == f"{pooled['uncertainty']['low']['error_rate']:.0%}"
    entry = headline["ham10000_balanced_accuracy"]
    low, high = entry["ci95"]
    assert ("Balanced accuracy", f"{entry['value']:.1%}", f"95% CI {low:.1%} to {high:.1%}") in shown
    entry = headline["isic2017_melanoma_auc"]
    assert ("Melanoma AUC", f"{entry['value']:.3f}", f"95% CI {entry['ci95'][0]:.3f} to {entry['ci95'][1]:.3f}") in shown
    assert "HAM10000 test" in text and "ISIC 2017 val" in text
    assert "CPU" in text or "GPU" in text
    assert app.sidebar.text_input(key="data_dir_input").value.endswith("data")


def test_home_counts_split_images_per_source(app, weights_card, data_dir):
    """Images per split and source (not HAM10000 and ISIC 2017 added up): the model card's counts, which are those of
    the data it was trained on."""
    from core.data.datasets import load_manifest
    from core.data.splits import assign_splits

    table = dataframe(app, "test")
    assert list(table.index) == ["HAM10000", "ISIC 2017"]
    splits = weights_card["dataset_summary"]["splits"]
    assert int(table.loc[:, "train"].sum()) == splits["train"]["n_images"]
    ham = assign_splits(load_manifest(data_dir, sources=("ham10000",)), seed=42)["split"].value_counts()
    for split in ("train", "val", "test"):
        assert table.loc["HAM10000", split] == ham[split], split
        assert table.loc["ISIC 2017", split] == splits[split]["n_images"] - ham[split], split


# ---------------------------------------------------------------- Analyze
def test_analyze_dataset_example(app, weights_card, data_dir):
    at = page(app, "app_pages/analyze.py")
    at.radio(key="input_mode").set_value("Dataset example").run()
    assert not at.exception, at.exception
    at.selectbox(key="example_class").set_value("mel").run()
    at.button(key="example_pick").click().run()
    assert not at.exception, at.exception
    check_analysis(at, true_code="mel")
    # examples are held-out test images (three random picks)
    from core.data.datasets import load_manifest
    from core.data.splits import assign_splits

    split = assign_splits(load_manifest(data_dir), seed=42).set_index("image_id")["split"]
    picked = [at.session_state["example"]]
    for _ in range(2):
        at.button(key="example_pick").click().run()
        picked.append(at.session_state["example"])
    assert {e["dx"] for e in picked} == {"mel"} and {split[e["image_id"]] for e in picked} == {"test"}, picked
    check_analysis(at, true_code="mel")
    # the CAM controls offer the methods that differ on mask-CN and every class; each CAM image says what made it
    from core.analysis.cam import distinct_class_cams

    assert list(at.selectbox(key="cam_method").options) == distinct_class_cams(linear_head=True)
    assert len(at.selectbox(key="cam_target").options) == 8
    at.selectbox(key="cam_target").set_value("bcc").run()
    at.toggle(key="cam_masked").set_value(True).run()
    assert not at.exception, at.exception
    assert "Grad-CAM · target Basal cell carcinoma (bcc) · lesion mask applied (map kept inside it) " \
           "(red = most influential)" in captions(at)
    # switching to the coarse mask re-measures on that mask without errors
    at.segmented_control(key="mask_choice").set_value("coarse").run()
    assert not at.exception, at.exception
    assert "(coarse-SN mask)" in texts(at)
    # another class: the melanoma example and its result go at once, until a new example is picked
    at.selectbox(key="example_class").set_value("nv").run()
    assert not at.exception, at.exception
    assert "example" not in at.session_state
    assert not any(m.value.startswith("### ") for m in at.markdown), "the previous example's result is still shown"


def test_analyze_upload_real_and_bad_file(app, data_dir, monkeypatch):
    import core.reports.report

    built = []
    real_build = core.reports.report.build_pdf_report
    monkeypatch.setattr(core.reports.report, "build_pdf_report", lambda **kw: built.append(kw) or real_build(**kw))
    at = page(app, "app_pages/analyze.py")
    image = sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[0]
    at.file_uploader(key="upload").set_value(("lesion.jpg", b"this is not an image", "image/jpeg")).run()
    assert not at.exception, at.exception
    assert at.error and "Cannot analyse" in at.error[0].value, [e.value for e in at.error]
    # the page keeps working: a real full-resolution upload is analysed next
    at.file_uploader(key="upload").set_value((image.name, image.read_bytes(), "image/jpeg")).run()
    assert not at.exception, at.exception
    check_analysis(at)
    # a field of view turns the pixel sizes into millimetres
    at.number_input(key="fov_mm").set_value(15.0).run()
    values = dict(zip(*(dataframe(at, "Measurement")[c] for c in ("Measurement", "Value"))))
    assert values["Maximum diameter (Feret)"].endswith(" mm") and values["Scale"] == f"{15 / 600:.4f} mm per pixel"
    # the PDF is built only when asked for, once; then offered for download
    assert built == [], "the PDF was built without being asked for"
    at.text_input(key="report_lesion_label").set_value("L2 left shoulder").run()
    at.button(key="pdf_prepare").click().run()
    assert not at.exception, at.exception
    assert len(built) == 1 and built[0]["cam_caption"].startswith("Grad-CAM · target ")
    # filed by the file's hash (never its name), the lesion label; no DICOM study date: the analysis date is the exam's
    assert (built[0]["image_id"], built[0]["lesion_label"], built[0]["exam_date"]) == (
        hashlib.sha256(image.read_bytes()).hexdigest()[:12], "L2 left shoulder", None)
    assert [b.proto.label for b in at.get("download_button")] == ["Mask (PNG)", "PDF report"]
    at.text_input(key="report_note").set_value("second look").run()  # new content: asked for again
    assert len(built) == 1 and at.button(key="pdf_prepare").proto.label == "Prepare PDF report"


def test_analyze_says_the_model_is_loading(app, data_dir, monkeypatch):
    """The first analysis after a start waits up to 20 s for the model: the page says it is loading the model, then
    analyses (before, only "Analysing…" showed the whole time)."""
    import streamlit as st

    import ui.analyzers

    class StillLoading:
        """The app's pool, as it is right after a start: its first replica not yet loaded at the first look."""

        def __init__(self, real):
            self.real, self.looked = real, False

        def wait(self, timeout=None):
            if timeout == 0 and not self.looked:
                self.looked = True
                return False
            return self.real.wait(timeout)

        def __getattr__(self, name):
            return getattr(self.real, name)

    loading = StillLoading(ui.analyzers.pool())
    monkeypatch.setattr(ui.analyzers, "pool", lambda: loading)
    said, real_spinner = [], st.spinner
    monkeypatch.setattr(st, "spinner", lambda text, *args, **kwargs: said.append(text) or real_spinner(text, *args,
                                                                                                     **kwargs))
    at = page(app, "app_pages/analyze.py")
    image = sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[2]  # not analysed by other tests
    at.file_uploader(key="upload").set_value((image.name, image.read_bytes(), "image/jpeg")).run()
    assert not at.exception, at.exception
    assert said[:2] == [ui.analyzers.MODEL_LOADING_TEXT, "Analysing…"], said
    check_analysis(at)


def test_analyze_accepts_every_format_core_intake_reads(app, data_dir):
    """The file picker lists exactly core.io.intake's formats; a GIF (which core.io.intake reads) is analysed."""
    import io

    from PIL import Image

    from core.io.intake import FILE_EXTENSIONS

    at = page(app, "app_pages/analyze.py")
    assert list(at.file_uploader(key="upload").proto.type) == [f".{e}" for e in FILE_EXTENSIONS]
    assert ".gif" in at.file_uploader(key="upload").proto.type
    image = sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[0]
    gif = io.BytesIO()
    Image.open(image).convert("P").save(gif, format="GIF")
    at.file_uploader(key="upload").set_value(("lesion.gif", gif.getvalue(), "image/gif")).run()
    assert not at.exception, at.exception
    check_analysis(at)


# ---------------------------------------------------------------- Dataset explorer
def test_dataset_explorer_counts(app):
    at = page(app, "app_pages/dataset_explorer.py")
    counts = metrics(at)
    assert counts["Images"] == "10,015"
    assert counts["Lesions"] == "7,470"
    keys = {c.proto.id for c in at.get("plotly_chart")}
    assert len(at.get("plotly_chart")) >= 6, keys  # class, split, age, sex, site, dx_type
    assert len(at.image) >= 12  # gallery
    at.segmented_control(key="x_source").set_value("isic2017").run()
    assert not at.exception, at.exception
    assert metrics(at)["Images"] == "2,150"


def test_dataset_explorer_sends_a_gallery_image_to_analyze(app, ham_split):
    at = page(app, "app_pages/dataset_explorer.py")
    buttons = [b for b in at.button if str(b.key).startswith("g_analyze_")]
    assert len(buttons) == len(at.image) >= 12  # one per gallery image
    buttons[0].click().run()
    assert not at.exception, at.exception
    example = at.session_state["example"]
    row = ham_split.set_index("image_id").loc[example["image_id"]]
    assert (example["dx"], example["split"], at.session_state["input_mode"]) == (row["dx"], row["split"], "Dataset example")
    seen = {"test": "held-out test image", "val": "validation image", "train": "training image"}[row["split"]]
    check_analysis(at, true_code=row["dx"])
    assert seen in texts(at)
    # the image's own age, sex and site fill the patient context (the model uses them), not the fields left empty
    from core.data.patient_context import PatientContext

    own = PatientContext.from_metadata(row["age"], row["sex"], row["localization"])
    assert own.given
    assert (at.text_input(key="context_age").value, at.selectbox(key="context_sex").value,
            at.selectbox(key="context_site").value) == ("" if own.age is None else f"{own.age:g}", own.sex or "",
                                                        own.site or "")


def test_dataset_explorer_isic_charts_and_metadata_note(app, isic_manifest, data_dir):
    """ISIC 2017: the class chart has a bar for each of its classes with the real counts (no empty category), the
    split chart only train/val/test, and the page says its labels give no age, sex or site (labels.csv has none)."""
    at = page(app, "app_pages/dataset_explorer.py")
    at.segmented_control(key="x_source").set_value("isic2017").run()
    assert not at.exception, at.exception
    bars = [t for t in figure(at, "dx_chart")["data"]]
    shown = {values(t["x"])[0]: values(t["y"])[0] for t in bars}
    from ui.formatting import short_name

    expected = {short_name(c): n for c, n in isic_manifest["dx"].value_counts().items()}
    assert shown == expected
    split = figure(at, "split_chart")
    assert {x for t in split["data"] for x in values(t["x"])} == {"train", "val", "test"}
    labels = (data_dir / "isic2017" / "labels.csv").read_text().splitlines()[0].split(",")
    assert not {"age", "sex", "localization"} & set(labels)
    notes = [i.value for i in at.info]
    assert "The ISIC 2017 labels in the data folder give no age, sex or anatomical site: there is nothing to chart." \
           in notes, notes
    assert not any(k in c.proto.id for c in at.get("plotly_chart") for k in ("age_chart", "sex_chart", "site_chart"))


def test_dataset_explorer_without_data_dir_explains(app, weights_card):
    at = app
    at.sidebar.text_input(key="data_dir_input").set_value("").run()
    at = page(at, "app_pages/dataset_explorer.py")
    assert any("DATA_DIR" in i.value for i in at.info)
    n = weights_card["dataset_summary"]["all"]["n_images"]
    assert metrics(at)["Images"] == f"{n:,}"


# ---------------------------------------------------------------- Model performance
def _sensitivity_specificity(table, column: str, threshold: float) -> tuple[str, str]:
    """What the page should show, computed here from the CSV: (sensitivity, specificity) at `threshold`."""
    is_mel = table["dx"] == "mel"
    positive = table[column] >= threshold
    return f"{(positive & is_mel).sum() / is_mel.sum():.1%}", f"{(~positive & ~is_mel).sum() / (~is_mel).sum():.1%}"


def _ci(entry: dict, fmt: str) -> str:
    return f"{entry['value']:{fmt}} (95% CI {entry['ci95'][0]:{fmt}} to {entry['ci95'][1]:{fmt}})"


@pytest.mark.parametrize("test_set, source", [("ham10000_test", "ham10000"), ("isic2017_test", "isic2017")])
def test_model_performance(app, weights_card, test_set, source):
    """Every view is fed from the chosen test set: the card's figures with CIs, and the CSV rows of that source."""
    import pandas as pd

    at = page(app, "app_pages/model_performance.py")
    at.segmented_control(key="perf_test_set").set_value(test_set).run()
    assert not at.exception, at.exception
    card_set = weights_card["metrics"][test_set]
    m = card_set["classification"]["mask_cn"]
    ci = m["ci"]
    assert metrics(at)["Balanced accuracy"] == f"{ci['balanced_accuracy']['value']:.1%}"
    low, high = ci["balanced_accuracy"]["ci95"]
    assert metric_deltas(at)["Balanced accuracy"] == f"95% CI {low:.1%} to {high:.1%}"
    assert metrics(at)["Referral sensitivity"] == f"{card_set['referral']['sensitivity']['value']:.1%}"
    table = dataframe(at, "Support")
    assert list(table["Code"]) == list(CLASS_CODES)
    assert list(table["Support"]) == [m["per_class"][c]["support"] for c in CLASS_CODES]
    # counts view shows the model card's matrix exactly
    at.toggle(key="cm_norm").set_value(False).run()
    assert [[int(v) for v in row] for row in figure(at, "cm_chart")["data"][0]["z"]] == m["confusion_matrix"]
    # the boxes pick a cell; its images (of this test set) are listed
    at.selectbox(key="cm_true").set_value("mel").run()
    at.selectbox(key="cm_pred").set_value("mel").run()
    assert not at.exception, at.exception
    n_cell = m["confusion_matrix"][CLASS_CODES.index("mel")][CLASS_CODES.index("mel")]
    assert f"**{n_cell} test image(s): true Melanoma, predicted Melanoma**" in texts(at)
    assert len(at.image) == min(n_cell, 6)
    # reliability diagrams of the plain softmax and of the shown probabilities
    bins = [b for b in m["calibration"]["after"]["bins"] if b["count"] > 0]
    traces = [t for t in figure(at, "calibration_chart")["data"] if t.get("name") == "mean confidence"]
    assert values(traces[1]["y"]) == pytest.approx([b["confidence"] for b in bins])
    assert f"temperature T = {weights_card['decision_rule']['temperature']:.2f}" in texts(at)
    # uncertainty: both risk-coverage curves, the chosen set's levels with CIs and the validation error rates
    curves = figure(at, "risk_coverage_chart")["data"]
    assert len(curves) == 2
    assert values(curves[0]["y"]) == pytest.approx(weights_card["metrics"]["ham10000_test"]["uncertainty"]["risk_coverage"]["risk"])
    levels = dataframe(at, "Validation error rate")
    assert list(levels["Level"]) == list(card_set["uncertainty"]["levels"])
    for row in levels.itertuples(index=False):
        entry = card_set["uncertainty"]["levels"][row.Level]
        assert row[3] == _ci(entry["error_rate"], ".1%")
        assert row[4] == f"{weights_card['uncertainty']['error_rates'][row.Level]:.1%}"
    # OOD results, retrieval next to the classifier, the models and segmentation variants with CIs
    assert len(dataframe(at, "Rejected as not dermoscopy")) == len(weights_card["ood"]["results"])
    retrieval = dataframe(at, "k-NN vote balanced accuracy")
    assert len(retrieval) == 2
    assert retrieval["Classifier balanced accuracy"].iloc[1] == \
        f"{weights_card['metrics']['isic2017_test']['classification']['mask_cn']['balanced_accuracy']:.1%}"
    models = dataframe(at, "ECE shown")
    assert len(models) == len(card_set["classification"])
    assert models["Balanced accuracy"].iloc[0] == _ci(ci["balanced_accuracy"], ".3f")
    seg = dataframe(at, "Thresholded Jaccard (0.65)")
    variants = [k for k in card_set["segmentation"] if k != "paired_differences"]
    assert len(seg) == len(variants)
    assert seg["Dice"].iloc[0] == _ci(card_set["segmentation"][variants[0]]["dice"], ".3f")
    assert len(dataframe(at, "Mean difference")) == len(card_set["segmentation"]["paired_differences"])
    # the referral tab: sensitivity / specificity at the card's threshold, from the CSV rows of each source
    predictions = pd.read_csv(WEIGHTS / "test_predictions.csv")
    referral = dataframe(at, "Referred")
    threshold = weights_card["referral"]["threshold"]
    for row, part_source in zip(referral.itertuples(index=False), ("ham10000", "isic2017")):
        part = predictions[predictions["source"] == part_source]
        assert (row.Sensitivity, row.Specificity) == _sensitivity_specificity(part, "mel_score", threshold)
    # the rule's sentence says the threshold holds the target sensitivity in each validation source, with its melanomas
    rule_text = next(m.value for m in at.markdown if m.value.startswith("**Rule:**"))
    from core.decisions.referral import VALIDATION_SOURCES

    fit = weights_card["referral"]["fit"]
    assert f"in each validation source with at least {fit['min_melanomas_to_bind']} melanomas" in rule_text
    assert all(f"{VALIDATION_SOURCES[name]}: {n} melanomas" in rule_text
               for name, n in fit["validation_melanomas_per_source"].items())
    # the Out of source tab: each held-out source and the pooled row the screens quote, from the card
    oos = weights_card["out_of_source"]
    rules = dataframe(at, "Low: share")
    assert list(rules["Held-out source"]) == [*oos["sources"], "pooled"]
    pooled = oos["rules_pooled"]["refer"]["melanoma_sensitivity"]
    assert rules["Melanomas referred"].iloc[-1].startswith(f"{pooled['value']:.0%}")
    shipped = dataframe(at, "Classes")
    assert len(shipped) == len(oos["shipped_per_source"])
    assert not at.exception, at.exception


def test_model_performance_fits_the_page(app, weights_card):
    """Seen at 1280 px: twelve tabs hid the last ones behind a scroll arrow, the training legend listed 7 of 11 runs
    in repeated colours and the tables of figures with CIs pushed their last columns out of sight."""
    at = page(app, "app_pages/model_performance.py")
    labels = [tab.label for tab in at.tabs]
    assert len(labels) <= 8 and sum(len(label) for label in labels) <= 75, labels
    chart = figure(at, "training_chart")
    runs = weights_card["training_curves"]
    listed = [trace["name"] for trace in chart["data"] if trace.get("showlegend", True)]
    assert sorted(listed) == sorted(runs)  # every run once in the legend
    colours = {trace["name"]: trace["line"]["color"] for trace in chart["data"]}
    assert len(set(colours.values())) == len(runs)  # one colour per run
    assert chart["layout"]["legend"]["orientation"] == "h"  # below the plots, wrapping: not cut to their height
    # the tables of text figures wrap in st.table (all columns at the page's width)
    wide = {column for table in at.table for column in table.value.columns}
    assert {"ECE shown", "Card threshold: specificity", "Thresholded Jaccard (0.65)", "Low: share"} <= wide
    assert not at.exception, at.exception


def test_model_performance_session_threshold(app, weights_card):
    """The slider sets this session's referral threshold: the table follows it, the reset returns to the card's."""
    import pandas as pd

    at = page(app, "app_pages/model_performance.py")
    predictions = pd.read_csv(WEIGHTS / "test_predictions.csv")
    for threshold in (0.1, 0.5):
        at.select_slider(key="referral_slider").set_value(threshold).run()
        assert not at.exception, at.exception
        assert at.session_state["referral_threshold"] == threshold
        table = dataframe(at, "Referred")
        for row, source in zip(table.itertuples(index=False), ("ham10000", "isic2017")):
            part = predictions[predictions["source"] == source]
            assert (row.Sensitivity, row.Specificity) == _sensitivity_specificity(part, "mel_score", threshold)
            assert row.Referred == f"{(part['mel_score'] >= threshold).mean():.1%}"
        assert any(f"your session's threshold {threshold:.3f}" in a.value for a in at.info)
    at.button(key="referral_reset").click().run()
    assert at.session_state["referral_threshold"] is None
    assert not any("your session's threshold" in a.value for a in at.info)


def _card_with(weights_card, tmp_path, extra: str, predictions=None):
    """A weights folder holding a copy of the card whose test sets also list `extra` (mask-CN's figures with a
    different confusion matrix) and, when given, a predictions table."""
    import numpy as np

    weights = tmp_path / "weights"
    weights.mkdir()
    card = json.loads(json.dumps(weights_card))
    for entry in card["metrics"].values():
        copy = json.loads(json.dumps(entry["classification"]["mask_cn"]))
        copy["confusion_matrix"] = np.fliplr(np.array(copy["confusion_matrix"])).tolist()
        entry["classification"][extra] = copy
    (weights / "model_card.json").write_text(json.dumps(card))
    if predictions is not None:
        predictions.to_csv(weights / "test_predictions.csv", index=False)
    return weights, card


def _app_on(weights, monkeypatch, data_dir) -> AppTest:
    monkeypatch.setenv("LESIONLENS_WEIGHTS", str(weights))  # no weight files: the drill-down shows no CAMs
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    return page(at, "app_pages/model_performance.py")


def test_model_performance_without_predictions_of_the_selected_model(tmp_path, monkeypatch, data_dir, weights_card):
    """A model in the card without columns in the CSV (mask-CN, one view): its card figures, and the drill-down says
    there are no per-image predictions instead of showing mask-CN's."""
    import shutil

    weights, card = _card_with(weights_card, tmp_path, "mask_cn_single_view")
    shutil.copy(WEIGHTS / "test_predictions.csv", weights / "test_predictions.csv")
    at = _app_on(weights, monkeypatch, data_dir)
    at.selectbox(key="perf_model").set_value("mask_cn_single_view").run()
    assert not at.exception, at.exception
    flipped = card["metrics"]["ham10000_test"]["classification"]["mask_cn_single_view"]["confusion_matrix"]
    at.toggle(key="cm_norm").set_value(False).run()
    assert [[int(v) for v in row] for row in figure(at, "cm_chart")["data"][0]["z"]] == flipped
    notes = [i.value for i in at.info if "no per-image predictions of the mask-CN, one view" in i.value]
    assert len(notes) == 1, [i.value for i in at.info]
    assert not any("test image(s): true" in t for t in texts(at).splitlines())
    assert len(dataframe(at, "ECE shown")) == len(card["metrics"]["ham10000_test"]["classification"])


def test_model_performance_reads_the_selected_models_predictions(tmp_path, monkeypatch, data_dir, weights_card):
    """A predictions CSV with the image-only classifier's columns: with that model selected the drill-down counts its
    predictions of the chosen test set."""
    import numpy as np
    import pandas as pd

    table = pd.read_csv(WEIGHTS / "test_predictions.csv")
    probs = np.random.default_rng(0).dirichlet(np.ones(len(CLASS_CODES)), size=len(table))
    table["classifier_pred"] = [CLASS_CODES[i] for i in probs.argmax(1)]
    for j, code in enumerate(CLASS_CODES):
        table[f"classifier_p_{code}"] = probs[:, j]
    weights, _ = _card_with(weights_card, tmp_path, "classifier", table)
    at = _app_on(weights, monkeypatch, data_dir)
    at.selectbox(key="perf_model").set_value("classifier").run()
    at.segmented_control(key="perf_test_set").set_value("isic2017_test").run()
    at.selectbox(key="cm_true").set_value("nv").run()
    at.selectbox(key="cm_pred").set_value("bkl").run()
    assert not at.exception, at.exception
    isic = table[table["source"] == "isic2017"]
    n = int(((isic["dx"] == "nv") & (isic["classifier_pred"] == "bkl")).sum())
    assert f"**{n} test image(s): true Melanocytic nevus, predicted Benign keratosis-like lesion**" in texts(at)


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
    at = page(app, "app_pages/batch.py")
    images = sorted((data_dir / "ham10000" / "images").glob("*.jpg"))[:2]
    files = [(p.name, p.read_bytes(), "image/jpeg") for p in images] + [("broken.png", b"\x89PNG\r\n\x1a\nxx", "image/png")]
    upload(at, "batch_upload", files)
    at.button(key="batch_run").click().run()
    assert not at.exception, at.exception
    table = dataframe(at, "thumbnail")
    assert list(table["file"]) == [p.name for p in images] + ["broken.png"]
    assert table["status"].iloc[2].startswith("✗ ") and table["prediction"].isna().iloc[2]
    assert (table["status"].iloc[:2] == "✓ analysed").all()
    assert all(str(t).startswith("data:image/png;base64,") for t in table["thumbnail"].iloc[:2])
    probs = table[[f"p_{c}" for c in CLASS_CODES]].iloc[:2].to_numpy(dtype=float)  # shown in percent
    assert abs(probs.sum(axis=1) - 100).max() < 1e-2
    assert all(any(p.startswith(n) for n in CLASS_NAMES) for p in table["prediction"].iloc[:2])
    assert metrics(at)["Rejected / failed"] == "1"
    assert any("broken.png" in w.value and "Not analysed" in w.value for w in at.warning)
    for column in ("refer", "mel_score", "uncertainty_text", "ood", "area_px", "max_diameter_px", "asymmetry",
                   "border_irregularity", "colours"):
        assert column in table.columns and table[column].iloc[:2].notna().all(), column
    assert set(table["refer"].iloc[:2]) <= {"yes", "no"}
    assert all(t.startswith("Uncertainty ") and "of the time" in t for t in table["uncertainty_text"].iloc[:2])
    assert table["ood"].isna().iloc[2]
    assert [b.proto.label for b in at.get("download_button")] == ["Download results (CSV)"]


def test_batch_demo_uses_test_split_images(app, ham_split):
    at = page(app, "app_pages/batch.py")
    at.number_input(key="batch_n").set_value(10).run()
    at.button(key="batch_examples").click().run()
    assert not at.exception, at.exception
    table = dataframe(at, "thumbnail")
    assert len(table) == 10 and table["status"].str.startswith(("✓", "⚠")).all()
    split = ham_split.set_index("image_id")["split"]
    assert set(split[table["file"]]) == {"test"}, split[table["file"]].value_counts()
    assert set(CLASS_CODES) <= set(table["true_dx"])  # one per class first
