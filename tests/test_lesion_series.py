"""Watched lesions in an archive result (core.batch.lesion_series): a batch run (core.batch.batch_engine, local
back-end) over two lesions' visits becomes one series per lesion. Lesion X's third visit is its first photograph with
the lesion grown 30 % at its border (calibration.lesion_history_eval.enlarge), its second the same pixels in another
file; lesion Y's two visits are one image in two files. X changed at visit 3, Y is stable; --since keeps the lesions
watched since a date; rows without a date are left out."""
from __future__ import annotations

import cv2
import pandas as pd
import pytest

from core.analysis.followup import BAND_FILE, load_band, touches_edge
from core.analysis.inference import Analyzer
from core.batch import batch_engine
from core.batch.batch_results import read_result
from core.batch.lesion_series import SeriesInputError, lesion_series, main, read_visits
from core.io.intake import load_image_file
from core.decisions.model_card import load_card
from tests.test_followup import WEIGHTS
from calibration.lesion_history_eval import enlarge


@pytest.fixture(scope="module")
def archive(ham_split, tmp_path_factory):
    """(batch result folder, visits CSV) of the two lesions."""
    folder = tmp_path_factory.mktemp("archive")
    test = ham_split[(ham_split["split"] == "test") & (ham_split["dx"] == "nv")]
    analyzer = Analyzer.load(WEIGHTS)
    for path in test["image_path"]:  # the first whose lesion stays inside the image when grown
        x = load_image_file(path)
        grown, grown_mask = enlarge(x, analyzer.analyze(x).mask, 1.3, core=0.5)
        if not touches_edge(grown_mask):
            break
    y = load_image_file(test["image_path"].iloc[-1])
    files = {"x1.png": x, "x2.png": x, "x3.png": grown, "y1.png": y, "y2.png": y, "undated.png": y}
    for name, rgb in files.items():
        cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    visits = pd.DataFrame({"path": list(files), "patient_id": ["P1"] * 3 + ["P2"] * 3,
                           "lesion_id": ["X"] * 3 + ["Y"] * 3,
                           "date": ["2025-01-10", "2025-04-10", "2026-02-01", "2025-01-12", "2025-07-12", ""]})
    visits.to_csv(folder / "visits.csv", index=False)
    batch_engine.run(folder, folder / "out", WEIGHTS, workers=1, shard_size=8)
    return folder / "out", folder / "visits.csv"


def test_each_watched_lesion_becomes_a_series_that_says_when_it_changed(archive, capsys):
    out, visits_csv = archive
    band = load_band(WEIGHTS / BAND_FILE, load_card(WEIGHTS))[0]
    visits = read_visits(visits_csv)
    assert len(visits) == 5  # the undated row is left out
    table = lesion_series(read_result(out), visits, band)
    x, y = (table[table["lesion_id"] == lesion].iloc[0] for lesion in ("X", "Y"))
    assert (x["visits"], x["changed_at"], x["verdict"]) == (3, 3, "changed at visit 3 (2026-02-01)")
    assert "Maximum diameter +" in x["changes"]
    assert (y["visits"], pd.isna(y["changed_at"]), y["verdict"]) == (2, True, "stable over 2 visits (181 days)")
    assert list(table["lesion_id"]) == ["X", "Y"]  # changed lesions first
    this_year = lesion_series(read_result(out), visits, band, since=pd.Timestamp("2026-01-01").date())
    assert list(this_year["lesion_id"]) == ["X"]
    assert main([str(out), "--visits", str(visits_csv), "--since", "2026-01-01", "--weights", str(WEIGHTS)]) == 0
    assert "changed at visit 3" in capsys.readouterr().out


def test_a_visits_list_without_ids_is_refused_in_words(tmp_path):
    (tmp_path / "list.csv").write_text("path,date\na.png,2025-01-01\n")
    with pytest.raises(SeriesInputError, match="patient_id, lesion_id"):
        read_visits(tmp_path / "list.csv")
