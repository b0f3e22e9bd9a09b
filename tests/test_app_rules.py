"""The model card's rules as the screens apply them (AppTest on the real app, the shipped weights and real images):
one triage verdict (built on the melanoma referral rule) on Analyze, Batch, the predict CLI's CSV and the PDF, also at a
session's own threshold;
no diagnosis for an image that is not dermoscopy; an unusual image's diagnosis greyed with its warning; similar cases
with and without the data folder; patient context (validated, recorded in the PDF and the Batch CSV)."""
from __future__ import annotations

import csv
import dataclasses
import io
import re

import pytest
from apptest_support import alerts, captions, dataframe, keyed_block, metrics, page, texts, upload
from test_report import pdf_text

from core.decisions.triage import HEADLINES, NOT_ASSESSED_NOTE, TriageRule

ANALYZE, BATCH, PERFORMANCE = "app_pages/analyze.py", "app_pages/batch.py", "app_pages/model_performance.py"


@pytest.fixture
def pdfs(monkeypatch):
    """Every PDF the app builds in the test (bytes), in order."""
    import core.reports.report

    built = []
    real = core.reports.report.build_pdf_report
    monkeypatch.setattr(core.reports.report, "build_pdf_report", lambda **kw: built.append(real(**kw)) or built[-1])
    return built


def _image(data_dir, index: int = 0):
    return sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[index]


VERDICT_STARTS = tuple(f"**{h}.**" for h in HEADLINES.values())


def _verdict_alert(at) -> str:
    shown = [a for a in alerts(at) if a.startswith(VERDICT_STARTS)]
    assert len(shown) == 1, alerts(at)
    return shown[0]


def _analyze(at, name: str, data: bytes, pdf: bool = True):
    at = page(at, ANALYZE)
    upload(at, "upload", (name, data, "image/jpeg"))
    if pdf:
        at.button(key="pdf_prepare").click().run()
        assert not at.exception, at.exception
    return at


def _batch(at, files, metadata: tuple | None = None):
    at = page(at, BATCH)
    upload(at, "batch_upload", files)
    if metadata is not None:
        upload(at, "batch_metadata", metadata)
    if not at.button(key="batch_run").disabled:
        at.button(key="batch_run").click().run()
        assert not at.exception, at.exception
    return at


def _csv_rows(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def _analyzer_result(path):
    from core.io.intake import load_image_file
    from ui.analyzers import pool

    with pool().borrow() as analyzer:
        return analyzer.analyze(load_image_file(path))


# ---------------------------------------------------------------- one verdict everywhere
def test_verdict_agrees_on_every_surface_and_follows_the_session_threshold(app, data_dir, tmp_path, pdfs, downloads):
    from core.data.classes import CLASS_CODES
    from core.analysis.predict import predict_one
    from ui.analyzers import pool
    from ui.model_files import model_card

    image = _image(data_dir, 1)
    card_threshold = _analyzer_result(image).referral_threshold
    with pool().borrow() as analyzer:  # the predict CLI's row for the same file
        cli = predict_one(analyzer, image, tmp_path)
    refers, verdict = cli["refer"] == "yes", cli["triage"]
    score = float(cli["mel_score"])
    assert verdict in ("refer", "review", "no_referral")

    def check(at, refer: bool, level: str, note: str, threshold: float) -> None:
        shown = _verdict_alert(at)
        assert shown.startswith(f"**{HEADLINES[level]}.**") and note in shown, shown
        text = pdf_text(pdfs[-1])
        assert f"Triage: {HEADLINES[level]}." in text, text
        # the melanoma rule is one statement with the verdict: its sentence when it fires, and the score and threshold
        assert (re.search(r"Melanoma \d+\.\d% reaches its referral threshold", text) is not None) == refer, text
        assert f"referral threshold {threshold:.3f}" in text, text
        assert note in text

    at = _analyze(app, image.name, image.read_bytes())
    check(at, refers, verdict, "the model card's threshold", card_threshold)
    at = _batch(at, [(image.name, image.read_bytes(), "image/jpeg")])
    table = dataframe(at, "thumbnail")
    assert list(table["refer"]) == [cli["refer"]] and list(table["triage"]) == [HEADLINES[verdict]]
    (row,) = _csv_rows(downloads["lesionlens_batch.csv"])
    assert row["refer"] == cli["refer"] and row["mel_score"] == cli["mel_score"] and row["triage"] == verdict
    assert row["referral_threshold"] == f"{card_threshold:.3f}"  # as the screens write it (ui.referral.threshold_text)

    # a session threshold on the other side of this image's melanoma score flips the melanoma rule on every surface;
    # the verdict follows it (it changes unless another malignant class or doubt decides it), and each says so
    at = page(at, PERFORMANCE)
    options = [float(o) for o in at.select_slider(key="referral_slider").options if "model card" not in o]
    threshold = min(o for o in options if o > score) if refers else max(o for o in options if o <= score)
    at.select_slider(key="referral_slider").set_value(threshold).run()
    assert not at.exception, at.exception
    probs = [float(cli[f"p_{c}"]) for c in CLASS_CODES]
    flipped = TriageRule.from_card(model_card()).verdict(probs, cli["uncertainty_level"], cli["ood_level"],
                                                         mel_threshold=threshold).level
    note = f"your session's threshold {threshold:.3f}; the model card's is {card_threshold:.3f}"
    at = _analyze(at, image.name, image.read_bytes())
    check(at, not refers, flipped, note, threshold)
    # the verdict quotes the operating point of the threshold in use, not the card's held-out figures
    shown = _verdict_alert(at)
    assert f"At your session's melanoma threshold {threshold:.3f}, the melanoma rule referred" in shown, shown
    assert "At clinics the model was not trained on" not in shown
    at = _batch(at, [(image.name, image.read_bytes(), "image/jpeg")])
    table = dataframe(at, "thumbnail")
    assert list(table["refer"]) == ["no" if refers else "yes"] and list(table["triage"]) == [HEADLINES[flipped]]
    assert any(note in c for c in texts(at).splitlines())
    (row,) = _csv_rows(downloads["lesionlens_batch.csv"])
    assert row["refer"] == ("no" if refers else "yes") and float(row["referral_threshold"]) == threshold
    assert row["triage"] == flipped


# ---------------------------------------------------------------- out of distribution
REFUSED_START = f"**{HEADLINES['not_assessed']}.**"


def _no_diagnosis(at, reason: str) -> None:
    """A verdict of its own with the reason and that a refusal is no reassurance: no class heading, probability,
    referral, CAM, measurements or similar cases."""
    assert any(e.value.startswith(REFUSED_START) and reason in e.value and NOT_ASSESSED_NOTE in e.value
               for e in at.error), alerts(at)
    assert not [m.value for m in at.markdown if m.value.startswith("### ")]
    assert not at.get("plotly_chart") and not at.metric and "Probability" not in texts(at)
    assert [a for a in alerts(at) if a.startswith(VERDICT_STARTS)] == [a for a in alerts(at) if a.startswith(REFUSED_START)]
    assert "Similar cases" not in texts(at) and "Class activation map" not in texts(at)
    assert not [t for t in at.table] and len(at.image) == 1  # the upload itself, no overlay or CAM
    assert [b.proto.label for b in at.get("download_button")] == ["PDF report"]


def test_a_real_photograph_gets_no_diagnosis(app, pdfs, downloads):
    """skimage's coffee photograph (held out of the dermoscopy check's training; judged not skin) on Analyze, in
    the PDF and on Batch."""
    import cv2
    import skimage.data

    ok, encoded = cv2.imencode(".png", skimage.data.coffee()[:, :, ::-1])
    data = encoded.tobytes()
    at = _analyze(app, "coffee.png", data)
    _no_diagnosis(at, "does not look like an image of skin")
    text = pdf_text(pdfs[-1])
    assert "No diagnosis" in text and "does not look like an image of skin" in text
    assert "No automated assessment: review this lesion yourself" in text
    assert "Most likely" not in text and "Melanoma referral" not in text and "Similar confirmed cases" not in text
    at = _batch(at, [("coffee.png", data, "image/png")])
    table = dataframe(at, "thumbnail")
    assert table["status"].iloc[0] == "⚠ not a skin image: no automated assessment, review this lesion yourself"
    assert table["prediction"].isna().iloc[0] and table["triage"].iloc[0] == HEADLINES["not_assessed"]
    assert table["refer"].isna().iloc[0] and table["ood"].iloc[0] == "⚠ not skin"
    assert metrics(at)["No automated assessment"] == "1"
    (row,) = _csv_rows(downloads["lesionlens_batch.csv"])
    assert row["pred"] == "" and row["refer"] == "" and row["p_mel"] == "" and row["ood_level"] == "not_skin"
    assert row["triage"] == "not_assessed"
    assert row["ood_reason"].startswith("This does not look like an image of skin") and row["model_version"]


def test_a_clinical_camera_photo_gets_no_diagnosis(app, clinical_photo, pdfs, downloads):
    """A real DermNet photograph from a category the dermoscopy check never saw, with its watermark, on Analyze, in
    the PDF and on Batch: the clinical-photo sentence and nothing of a diagnosis."""
    from core.decisions.ood import CLINICAL_PHOTO_TEXT

    data = clinical_photo.read_bytes()
    at = _analyze(app, clinical_photo.name, data)
    _no_diagnosis(at, CLINICAL_PHOTO_TEXT)
    text = pdf_text(pdfs[-1])
    assert "No diagnosis" in text and "clinical (camera) photo" in text and "take the image through a" in text
    assert "No automated assessment: review this lesion yourself" in text
    assert "Most likely" not in text and "Melanoma referral" not in text and "Lesion measurements" not in text
    at = _batch(at, [(clinical_photo.name, data, "image/jpeg")])
    table = dataframe(at, "thumbnail")
    assert table["status"].iloc[0] == "⚠ clinical (camera) photo: no automated assessment, review this lesion yourself"
    assert table["prediction"].isna().iloc[0] and table["triage"].iloc[0] == HEADLINES["not_assessed"]
    (row,) = _csv_rows(downloads["lesionlens_batch.csv"])
    assert row["ood_level"] == "clinical_photo" and row["pred"] == "" and row["refer"] == "" and row["p_mel"] == ""
    assert row["ood_reason"] == CLINICAL_PHOTO_TEXT


@pytest.fixture
def ood_level(monkeypatch):
    """Make every analysis report the given OOD level (the detector itself is tested in test_inference)."""
    from core.analysis.inference import Analyzer
    from core.data.classes import CLASS_CODES

    chosen = {}
    real = Analyzer.analyze

    def analyze(self, rgb, *args, **kwargs):
        result = real(self, rgb, *args, **kwargs)
        triage = self.triage.verdict([result.probs[c] for c in CLASS_CODES], result.uncertainty_level, chosen["level"],
                                     chosen["reason"])
        return dataclasses.replace(result, ood_level=chosen["level"], ood_reason=chosen["reason"], triage=triage)

    monkeypatch.setattr(Analyzer, "analyze", analyze)
    return lambda level, reason: chosen.update(level=level, reason=reason)


def test_not_dermoscopy_means_no_diagnosis_whatever_the_image(app, data_dir, ood_level, pdfs, downloads):
    """The consequence of the level, on a real dermoscopic image the detector is told to reject."""
    ood_level("clinical_photo", "TEST REASON: not dermoscopy.")
    image = _image(data_dir)
    at = _analyze(app, image.name, image.read_bytes())
    _no_diagnosis(at, "TEST REASON: not dermoscopy.")
    text = pdf_text(pdfs[-1])
    assert "Most likely" not in text and "TEST REASON" in text and "review this lesion yourself" in text
    at = _batch(at, [(image.name, image.read_bytes(), "image/jpeg")])
    assert list(dataframe(at, "thumbnail")["triage"]) == [HEADLINES["not_assessed"]]
    (row,) = _csv_rows(downloads["lesionlens_batch.csv"])
    assert row["pred"] == "" and row["ood_reason"] == "TEST REASON: not dermoscopy." and row["triage"] == "not_assessed"


def test_an_unusual_image_is_shown_greyed_with_its_warning(app, data_dir, ood_level, pdfs):
    ood_level("unusual", "TEST REASON: unlike the training images.")
    image = _image(data_dir)
    at = _analyze(app, image.name, image.read_bytes())
    assert any(w.startswith("**Unusual image.**") and "TEST REASON" in w for w in [w.value for w in at.warning])
    # the diagnosis is there, inside the containers the greying CSS rule applies to
    from ui.formatting import GREYED_CSS

    assert GREYED_CSS in [h.proto.body for h in at.get("html")]
    block = keyed_block(at, "unusual_diagnosis")
    assert block is not None and keyed_block(at, "unusual_probabilities") is not None
    assert any(m.value.startswith("### ") for m in block.markdown) and "Probability" in [m.label for m in block.metric]
    assert "Unusual image: TEST REASON: unlike the training images." in pdf_text(pdfs[-1])
    ood_level("in", "")  # an ordinary image: nothing greyed
    at = _analyze(at, "other.jpg", _image(data_dir, 2).read_bytes(), pdf=False)
    assert keyed_block(at, "unusual_diagnosis") is None and keyed_block(at, "diagnosis") is not None
    assert not at.get("html")


# ---------------------------------------------------------------- similar cases
def test_similar_cases_with_and_without_the_data_folder(app, data_dir, pdfs):
    image = _image(data_dir)
    expected = _analyzer_result(image).similar
    at = _analyze(app, image.name, image.read_bytes())
    shown = sorted((c for c in captions(at) if "similarity" in c), key=lambda c: int(c.split(".")[0]))  # a grid
    assert len(shown) == len(expected) == 8
    for rank, (caption, row) in enumerate(zip(shown, expected.itertuples(index=False)), start=1):
        assert caption.startswith(f"{rank}. ") and caption.endswith(row.image_id), caption
        assert f"{row.confirmed_by} · similarity {row.similarity:.2f}" in caption
    assert list(expected["similarity"]) == sorted(expected["similarity"], reverse=True)  # nearest first
    text = pdf_text(pdfs[-1])
    assert "Similar confirmed cases" in text and all(i in text for i in expected["image_id"])
    # without a data folder: ids, diagnoses and how they were confirmed, no images
    at.sidebar.text_input(key="data_dir_input").set_value("").run()
    at = _analyze(at, image.name, image.read_bytes(), pdf=False)
    table = dataframe(at, "confirmed_by")
    assert list(table["image_id"]) == list(expected["image_id"])
    assert table["dx"].iloc[0].endswith(f"({expected['dx'].iloc[0]})")
    assert not [c for c in captions(at) if "similarity" in c]


# ---------------------------------------------------------------- patient context
def test_patient_context_on_analyze(app, data_dir, pdfs, weights_card):
    used = bool(weights_card["patient_context"]["shipped"])  # the card decides whether the head is used
    use_words = "uses the patient context" if used else "does not use patient context"
    included = "The probabilities include the patient context entered above (age, sex, site)."
    image = _image(data_dir)
    at = page(app, ANALYZE)
    at.text_input(key="context_age").set_value("abc").run()
    upload(at, "upload", (image.name, image.read_bytes(), "image/jpeg"))
    assert any("age 'abc' is not a number of years" in e.value for e in at.error)
    assert [m.value for m in at.markdown if m.value.startswith("### ")], "the analysis stopped"
    assert any(use_words in c.value for c in at.caption)
    assert not any(c.value == included for c in at.caption)  # an invalid value is not used
    at.button(key="pdf_prepare").click().run()
    assert "Patient context" not in pdf_text(pdfs[-1])  # an invalid value is left out
    at.text_input(key="context_age").set_value("54").run()
    at.selectbox(key="context_sex").set_value("female").run()
    at.selectbox(key="context_site").set_value("lower extremity").run()
    assert not any("Patient context:" in e.value for e in at.error)
    at.button(key="pdf_prepare").click().run()
    assert not at.exception, at.exception
    text = pdf_text(pdfs[-1])
    assert "Age 54 years" in text and "Sex female" in text and "Anatomical site lower extremity" in text
    assert use_words in " ".join(text.split())
    assert any(c.value == included for c in at.caption) == used


def test_patient_context_csv_on_batch(app, data_dir, downloads):
    images = [_image(data_dir, i) for i in (0, 1)]
    files = [(p.name, p.read_bytes(), "image/jpeg") for p in images]
    bad = f"image,age,sex,site\n{images[0].name},40,female,back\n{images[1].stem},40,male,moon\n".encode()
    at = _batch(app, files, ("context.csv", bad, "text/csv"))
    assert any("context.csv: row 3" in e.value and "site 'moon'" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="batch_run").disabled and "batch_result" not in at.session_state
    good = f"image,age,sex,site\n{images[0].name},40,female,back\n{images[1].stem},,,\n".encode()
    upload(at, "batch_metadata", ("context.csv", good, "text/csv"))
    at.button(key="batch_run").click().run()
    assert not at.exception, at.exception
    table = dataframe(at, "thumbnail")
    assert list(table["age"].fillna("")) == ["40", ""] and list(table["sex"].fillna("")) == ["female", ""]
    rows = _csv_rows(downloads["lesionlens_batch.csv"])
    assert [(r["age"], r["sex"], r["site"]) for r in rows] == [("40", "female", "back"), ("", "", "")]
    from core.analysis.predict import COLUMNS

    assert list(rows[0]) == [*COLUMNS, "referral_threshold"]


def test_a_dicom_upload_brings_the_patient_context_of_its_tags(app, data_dir, pdfs, downloads):
    """Analyze and Batch read age, sex and site from a DICOM's tags when none is entered (as core.analysis.predict does);
    a two-frame object gets a frame selector on Analyze and a row per frame on Batch; what the user enters wins over
    the tags; no identifier is shown."""
    import pydicom

    from core.io.dicom_input import MadeUpPatient, wrap_jpeg

    image = _image(data_dir)
    data = wrap_jpeg(image.read_bytes(), MadeUpPatient("DCM-7", name="Doe^Jane", age=61, sex="male", site="back"))
    at = _analyze(app, "lesion.dcm", data)
    notes = [c.value for c in at.caption]
    assert any(c.startswith("Patient context from the DICOM tags: age 61 years; sex male; anatomical site back")
               for c in notes), notes
    text = pdf_text(pdfs[-1])
    assert "Age 61 years" in text and "Sex male" in text and "Anatomical site back" in text
    assert "Doe" not in texts(at) and "DCM-7" not in texts(at) and "Doe" not in text
    at.text_input(key="context_age").set_value("30").run()  # the user's entry replaces the tags
    at.button(key="pdf_prepare").click().run()
    assert "Age 30 years" in pdf_text(pdfs[-1]) and not any(c.value.startswith("Patient context from the DICOM")
                                                             for c in at.caption)
    at.text_input(key="context_age").set_value("").run()

    ds = pydicom.dcmread(io.BytesIO(data))  # two frames: the selector offers both
    ds.PixelData = pydicom.encaps.encapsulate(list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)) * 2)
    ds.NumberOfFrames = 2
    two = io.BytesIO()
    ds.save_as(two, enforce_file_format=True)
    at = _analyze(at, "two.dcm", two.getvalue(), pdf=False)
    assert list(at.selectbox(key="dicom_frame").options) == ["frame 1", "frame 2"]
    assert [m.value for m in at.markdown if m.value.startswith("### ")], "the analysis stopped"

    at = _batch(at, [("lesion.dcm", data, "application/dicom")])
    (row,) = _csv_rows(downloads["lesionlens_batch.csv"])
    assert (row["age"], row["sex"], row["site"]) == ("61", "male", "back") and row["pred"] and not row["error"]
    at = _batch(at, [("two.dcm", two.getvalue(), "application/dicom")])  # one row per frame, named as the CLI names them
    rows = _csv_rows(downloads["lesionlens_batch.csv"])
    assert [r["image"] for r in rows] == ["two_frame1", "two_frame2"]
    assert all(r["pred"] and not r["error"] and r["age"] == "61" for r in rows)


def test_each_frame_of_a_multi_frame_dicom_gets_its_own_cam(app, data_dir):
    """Switching frames on Analyze shows the chosen frame's CAM: the CAM cache is keyed by the frame too (it was keyed
    by the file alone, so the second frame showed the first frame's map)."""
    import numpy as np
    import pydicom

    from core.io.dicom_input import MadeUpPatient, wrap_jpeg

    ds = pydicom.dcmread(io.BytesIO(wrap_jpeg(_image(data_dir).read_bytes(), MadeUpPatient("DCM-8"))))
    other = pydicom.dcmread(io.BytesIO(wrap_jpeg(_image(data_dir, 5).read_bytes(), MadeUpPatient("DCM-8"))))
    frames = [next(pydicom.encaps.generate_frames(d.PixelData, number_of_frames=1)) for d in (ds, other)]
    ds.PixelData, ds.NumberOfFrames = pydicom.encaps.encapsulate(frames), 2
    two = io.BytesIO()
    ds.save_as(two, enforce_file_format=True)
    at = _analyze(app, "two.dcm", two.getvalue(), pdf=False)
    at.selectbox(key="dicom_frame").set_value(1).run()
    assert not at.exception, at.exception
    cams = list(at.session_state["cam_cache"].values())
    assert len(cams) == 2, "the second frame reused the first frame's CAM"
    assert not np.allclose(cams[0], cams[1])
