import csv
import shutil

import cv2

from core.classes import CLASS_CODES
from core.predict import COLUMNS, main


def test_predict_cli_on_a_folder_with_a_bad_file(tmp_path, data_dir, repo_root):
    inputs = tmp_path / "in"
    inputs.mkdir()
    originals = sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[:2]
    for path in originals:
        shutil.copy(path, inputs / path.name)
    (inputs / "notes.jpg").write_text("this is not an image")
    out = tmp_path / "out"
    assert main([str(inputs), "--out", str(out), "--weights", str(repo_root / "weights")]) == 0

    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["image"] for r in rows] == sorted([p.stem for p in originals] + ["notes"])
    assert list(rows[0].keys()) == COLUMNS
    bad = next(r for r in rows if r["image"] == "notes")
    assert "not an image" in bad["error"] and bad["pred"] == ""
    for row in (r for r in rows if r["image"] != "notes"):
        assert row["error"] == "" and row["pred"] in CLASS_CODES
        assert abs(sum(float(row[f"p_{c}"]) for c in CLASS_CODES) - 1) < 1e-3
        mask = cv2.imread(str(out / "masks" / f"{row['image']}.png"), cv2.IMREAD_GRAYSCALE)
        source = cv2.imread(str(inputs / f"{row['image']}.jpg"))
        assert mask.shape == source.shape[:2]
        assert set(mask.ravel().tolist()) <= {0, 255}
    assert not (out / "masks" / "notes.png").exists()
