"""The audit trail as the app writes it (AppTest on the real app, the shipped weights, real images, a real SQLite
store): every analysis, batch image, PDF download and referral-threshold change writes exactly one record with the
right fields, as "local" without sign-in; the Audit page filters and exports them and offers no way to change one."""
from __future__ import annotations

import csv
import io
import json

import pytest
from apptest_support import page, upload
from test_pacs_page import server  # noqa: F401  (the real Orthanc fixture)

from core.security.audit import AuditLog, sha256_of
from core.data.classes import CLASS_CODES

ANALYZE, BATCH, PERFORMANCE, AUDIT = ("app_pages/analyze.py", "app_pages/batch.py", "app_pages/model_performance.py",
                                      "app_pages/audit.py")


@pytest.fixture
def trail(monkeypatch, tmp_path) -> AuditLog:
    """The store the app writes to in this test (LESIONLENS_AUDIT_URL -> a fresh SQLite file)."""
    url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    monkeypatch.setenv("LESIONLENS_AUDIT_URL", url)
    return AuditLog(url)


def _images(data_dir, n: int):
    return sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[:n]


def _analyzed(path):
    from core.io.intake import load_image_file
    from ui.analyzers import pool

    with pool().borrow() as analyzer:
        return analyzer.analyze(load_image_file(path)), analyzer


def _check_result_fields(row: dict, path, threshold: float) -> None:
    r, analyzer = _analyzed(path)
    assert row["user"] == "local"
    assert row["image_sha256"] == sha256_of(path.read_bytes())
    assert row["model_version"] == analyzer.card.model_version
    assert row["top_class"] == r.label and row["uncertainty_level"] == r.uncertainty_level
    assert json.loads(row["probabilities"]) == pytest.approx({c: r.probs[c] for c in CLASS_CODES}, abs=1e-5)
    assert row["ood_level"] == r.ood_level
    assert row["threshold"] == pytest.approx(threshold)
    assert row["referral"] == (r.mel_score >= threshold)


def test_analysis_pdf_download_and_threshold_change_write_one_record_each(app, data_dir, trail):
    image = _images(data_dir, 1)[0]
    card_threshold = _analyzed(image)[0].referral_threshold
    at = page(app, ANALYZE)
    upload(at, "upload", (image.name, image.read_bytes(), "image/jpeg"))
    [row] = trail.query()
    assert row["action"] == "analysis"
    _check_result_fields(row, image, card_threshold)

    at.slider(key="mask_opacity").set_value(0.5).run()  # a rerun showing the same result is no new analysis
    assert len(trail.query()) == 1
    at.button(key="pdf_prepare").click().run()
    assert len(trail.query()) == 1  # building the PDF is not downloading it
    at.download_button(key="dl_pdf").click().run()
    assert not at.exception, at.exception
    [row] = trail.query(actions=["report_download"])
    _check_result_fields(row, image, card_threshold)
    assert len(trail.query()) == 2

    at = page(at, PERFORMANCE)
    options = [float(o) for o in at.select_slider(key="referral_slider").options if "model card" not in o]
    at.select_slider(key="referral_slider").set_value(options[-1]).run()
    [row] = trail.query(actions=["threshold_change"])
    assert row["user"] == "local" and row["threshold"] == pytest.approx(options[-1]) and row["image_sha256"] == ""
    at.button(key="referral_reset").click().run()
    assert [r["threshold"] for r in trail.query(actions=["threshold_change"])] == pytest.approx(
        [card_threshold, options[-1]])
    assert len(trail.query()) == 4


def test_a_batch_writes_one_record_per_analysed_image(app, data_dir, trail):
    images = _images(data_dir, 2)
    at = page(app, BATCH)
    upload(at, "batch_upload", [(p.name, p.read_bytes(), "image/jpeg") for p in images]
           + [("broken.jpg", b"not an image", "image/jpeg")])
    at.button(key="batch_run").click().run()
    assert not at.exception, at.exception
    rows = trail.query()
    assert [r["action"] for r in rows] == ["batch", "batch"]  # the broken file was not analysed
    card_threshold = _analyzed(images[0])[0].referral_threshold
    for path in images:
        [row] = [r for r in rows if r["image_sha256"] == sha256_of(path.read_bytes())]
        _check_result_fields(row, path, card_threshold)


def test_the_audit_page_filters_exports_and_cannot_change_a_record(app, data_dir, trail, downloads):
    image = _images(data_dir, 1)[0]
    at = page(app, ANALYZE)
    upload(at, "upload", (image.name, image.read_bytes(), "image/jpeg"))
    at = page(at, PERFORMANCE)
    slider = at.select_slider(key="referral_slider")
    slider.set_value(float(slider.options[-1])).run()
    at = page(at, AUDIT)
    assert not at.exception, at.exception
    assert at.metric[0].value == "2"
    rows = list(csv.DictReader(io.StringIO(downloads["lesionlens_audit.csv"].decode())))
    assert [r["action"] for r in rows] == ["threshold_change", "analysis"]
    assert rows[1]["image_sha256"] == sha256_of(image.read_bytes()) and rows[1]["user"] == "local"
    at.multiselect(key="audit_actions").set_value(["analysis"]).run()
    assert at.metric[0].value == "1"
    at.selectbox(key="audit_user").set_value("local").run()
    assert at.metric[0].value == "1"
    # nothing on the page edits: the table is read-only and there is no other input than the filters
    assert not at.get("arrow_data_editor") and not at.main.text_input and not at.main.button
    assert len(trail.query()) == 2


def test_an_audit_hook_adds_at_most_5_ms(app, data_dir, trail):
    """What a page pays per record: the image's SHA-256 (a full-resolution JPEG), the user, the model version and
    the write to a warm SQLite store."""
    import statistics
    import time

    from ui.audit_log import record_analysis

    image = _images(data_dir, 1)[0]
    data, (result, _) = image.read_bytes(), _analyzed(image)
    record_analysis(data, result)  # the store's engine and table are created on first use
    seconds = []
    for _ in range(50):
        start = time.perf_counter()
        record_analysis(data, result)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    print(f"\naudit hook (SHA-256 of a {len(data) / 1e3:.0f} kB JPEG + write): median {median * 1e3:.2f} ms, "
          f"p95 {sorted(seconds)[47] * 1e3:.2f} ms")
    assert median <= 0.005
    assert len(trail.query()) == 51


def test_a_pacs_store_and_its_pdf_download_write_one_record_per_image(data_dir, trail, monkeypatch, server):
    """Against a real Orthanc (tests/test_pacs_page.py's server): storing a study's results writes one pacs_store
    record per image (the DICOM file's SHA-256), storing again stores and records nothing, a PDF download one record."""
    from apptest_support import start_app
    from test_pacs_page import _search

    orthanc, objects = server
    monkeypatch.setenv("LESIONLENS_PACS_URL", orthanc.url)
    at = _search(page(start_app(data_dir), "app_pages/pacs.py"), objects[0][0].patient_id)
    at.button(key="pacs_analyse").click().run()
    _, analysed = at.session_state["pacs_analysed"]
    at.button(key="pacs_store").click().run()
    assert not at.exception, at.exception
    rows = trail.query()
    assert sorted(r["image_sha256"] for r in rows) == sorted(sha256_of(item.source.data) for item in analysed)
    for row in rows:
        [item] = [i for i in analysed if sha256_of(i.source.data) == row["image_sha256"]]
        assert row["action"] == "pacs_store" and row["user"] == "local" and row["ood_level"] == item.result.ood_level
        assert row["top_class"] == (item.result.label if item.result.diagnosis_shown else "")
    at.button(key="pacs_store").click().run()  # already there: nothing stored, nothing recorded
    assert len(trail.query()) == len(analysed)
    item = analysed[0]
    at.download_button(key=f"pacs_pdf_{item.source.instance.sop_uid}").click().run()
    [row] = trail.query(actions=["report_download"])
    assert row["image_sha256"] == sha256_of(item.source.data)


def test_no_result_is_shown_when_the_audit_trail_cannot_be_written(app, data_dir, monkeypatch):
    from ui.audit_log import UNAVAILABLE

    monkeypatch.setenv("LESIONLENS_AUDIT_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")  # nothing listens
    refused = UNAVAILABLE.split("(")[0]
    image = _images(data_dir, 1)[0]
    at = page(app, ANALYZE)
    upload(at, "upload", (image.name, image.read_bytes(), "image/jpeg"))
    assert any(e.value.startswith(refused) for e in at.error), [e.value for e in at.error]
    assert not [m for m in at.markdown if "Result for" in m.value] and not at.get("download_button")
    assert not at.session_state["result_cache"]  # no later rerun shows the unrecorded result
    at = page(at, BATCH)
    upload(at, "batch_upload", [(image.name, image.read_bytes(), "image/jpeg")])
    at.button(key="batch_run").click().run()
    assert any(e.value.startswith(refused) for e in at.error) and "batch_result" not in at.session_state
