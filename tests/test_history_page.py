"""The Lesion history page (app_pages/history.py) and what the Compare page now says (app_pages/compare.py), in
Streamlit's AppTest with the shipped weights and real HAM10000 photographs of one lesion."""
from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pydicom
import pytest
from streamlit.testing.v1 import AppTest

from core.io.dicom_input import MadeUpPatient, wrap_jpeg
from tests.test_followup import WEIGHTS, _shown
from calibration.lesion_history_eval import series_of

REPO = Path(__file__).resolve().parent.parent


def _page(monkeypatch, data_dir, path: str) -> AppTest:
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    monkeypatch.setenv("LESIONLENS_WEIGHTS", str(WEIGHTS))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=240)
    at.run()
    at.switch_page(path)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture(scope="module")
def lesion_paths(ham_split) -> list[Path]:
    """Three photographs of one held-out lesion."""
    test = ham_split[ham_split["split"] == "test"]
    return [Path(p) for p in next(s for s in series_of(test) if len(s) >= 3)["image_path"].iloc[:3]]


def _upload(at: AppTest, files: list[tuple[str, bytes]]) -> AppTest:
    at.file_uploader(key="history_uploads").set_value([(name, data, "image/jpeg") for name, data in files])
    at.run()
    assert not at.exception, at.exception
    return at


def test_uploaded_visits_with_dates_give_charts_thumbnails_a_table_and_a_pdf(monkeypatch, data_dir, lesion_paths):
    at = _page(monkeypatch, data_dir, "app_pages/history.py")
    at = _upload(at, [(p.name, p.read_bytes()) for p in lesion_paths])
    assert len(at.date_input) == 3 and "Give each image its date" in _shown(at)  # JPEGs carry no visit date
    for index, date_input in enumerate(at.date_input):
        date_input.set_value(dt.date(2025, 1, 10) + dt.timedelta(days=120 * index))
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    text = _shown(at)
    assert "over 3 visits (240 days)" in text or "Changed at visit" in text or "may not show" in text
    assert len(at.image) >= 3 and len(at.get("plotly_chart")) == 6
    table = at.dataframe[0].value
    assert list(table["Date"]) == ["2025-01-10", "2025-05-10", "2025-09-07"]
    assert [b.proto.label for b in at.get("download_button")] == ["Download lesion history (PDF)"]


def test_one_file_twice_and_a_broken_file_are_said_and_the_page_keeps_serving(monkeypatch, data_dir, lesion_paths):
    at = _page(monkeypatch, data_dir, "app_pages/history.py")
    first = lesion_paths[0].read_bytes()
    at = _upload(at, [("a.jpg", first), ("copy.jpg", first), ("broken.jpg", b"not an image")])
    errors = [e.value for e in at.error]
    assert any("**copy.jpg** is the same file as **a.jpg**" in e for e in errors), errors
    assert any("Cannot analyse **broken.jpg**" in e for e in errors), errors
    assert not at.get("plotly_chart")


def test_dicom_visits_bring_their_dates_and_millimetres(monkeypatch, data_dir, lesion_paths):
    files = []
    for index, path in enumerate(lesion_paths):
        patient = MadeUpPatient("P-H", study_date=f"2025{index * 4 + 1:02d}15", mm_per_pixel=0.05)
        files.append((f"visit{index}.dcm", wrap_jpeg(path.read_bytes(), patient)))
    assert pydicom.dcmread(io.BytesIO(files[0][1])).PixelSpacing == [0.05, 0.05]
    at = _upload(_page(monkeypatch, data_dir, "app_pages/history.py"), files)
    assert not at.date_input, "the dates come from the tags"
    assert not any("Cannot analyse" in e.value for e in at.error), [e.value for e in at.error]
    assert "2025-01-15 (from its DICOM tags)" in _shown(at)
    table = at.dataframe[0].value
    assert list(table["Date"]) == ["2025-01-15", "2025-05-15", "2025-09-15"]
    assert all(" mm" in value for value in table["Maximum diameter"])  # PixelSpacing: millimetres
    assert "Maximum diameter (mm)" in " ".join(c.proto.spec for c in at.get("plotly_chart"))


def test_compare_refuses_one_file_twice_and_states_each_images_verdict(monkeypatch, data_dir, lesion_paths):
    at = _page(monkeypatch, data_dir, "app_pages/compare.py")
    same = lesion_paths[0].read_bytes()
    for index in range(2):
        at.file_uploader(key=f"compare_upload_{index}").set_value(("same.jpg", same, "image/jpeg"))
    at.run()
    assert any("The baseline and the follow-up are the same file" in e.value for e in at.error)
    assert not at.table  # nothing compared
    at.file_uploader(key="compare_upload_1").set_value((lesion_paths[1].name, lesion_paths[1].read_bytes(),
                                                         "image/jpeg"))
    at.run()
    assert not at.exception, at.exception
    text = _shown(at) + "\n".join(e.value for e in at.error)
    for role in ("Baseline", "Follow-up"):
        assert any(f"**{role}: {headline}.**" in text for headline in
                   ("Refer", "Expert review advised", "No referral indicated")), text
