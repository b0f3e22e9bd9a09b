"""The predict CLI contract (issue 3), run as users run it: `python -m core.predict PATH... --out OUT_DIR
[--weights DIR]` in a child process.

PATHs mix a folder and single files; inputs are real HAM10000 images of three different sizes (a 600x450
full-resolution JPEG, a 200x150 JPEG and an odd-sized PNG crop), plus files that must fail one by one (text
renamed .jpg, a truncated JPEG, a path that does not exist) while the rest go on. Checked: the exact CSV columns,
one row per input with the error column, the masks (0/255, the input image's size) and that each row is what the
Analyzer itself says about that image (the CLI does not invent or shuffle results); a progress bar on stderr.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from core.classes import CLASS_CODES

EXPECTED_COLUMNS = ["image", "pred", "p_akiec", "p_bcc", "p_bkl", "p_df", "p_mel", "p_nv", "p_vasc", "ood", "error"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir, repo_root):
    """One CLI run over a folder + two single files + a missing path; returns paths, rows, masks, stderr."""
    root = tmp_path_factory.mktemp("predict")
    folder = root / "in"
    folder.mkdir()
    fullres = sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[0]
    small = data_dir / "ham10000" / "images" / "ISIC_0024306.jpg"
    shutil.copy(fullres, folder / fullres.name)  # 600x450
    rgb = cv2.imread(str(small))
    crop_path = folder / "crop_odd.png"
    cv2.imwrite(str(crop_path), rgb[3:140, 5:196])  # 191x137 PNG
    (folder / "notes.jpg").write_text("patient notes, not an image")
    data = fullres.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "readme.txt").write_text("not an image suffix: the folder scan skips it")
    missing = root / "does_not_exist.jpg"
    out = root / "out"
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    proc = subprocess.run(
        [sys.executable, "-m", "core.predict", str(folder), str(small), str(missing), "--out", str(out),
         "--weights", str(repo_root / "weights")],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "predictions.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames
        rows = list(reader)
    inputs = {fullres.stem: fullres, small.stem: small, "crop_odd": crop_path}
    return {"out": out, "header": header, "rows": rows, "stderr": proc.stderr, "inputs": inputs}


def test_csv_columns_and_one_row_per_input(run):
    assert run["header"] == EXPECTED_COLUMNS
    names = [r["image"] for r in run["rows"]]
    assert sorted(names) == sorted([*run["inputs"], "notes", "truncated", "does_not_exist"]), names
    assert "readme" not in names  # folders are scanned for image suffixes only


def test_bad_files_get_an_error_row_and_the_rest_go_on(run):
    rows = {r["image"]: r for r in run["rows"]}
    expected_errors = {"notes": "not an image", "truncated": "damaged or truncated", "does_not_exist": "not found"}
    for name, text in expected_errors.items():
        row = rows[name]
        assert text in row["error"], (name, row["error"])
        assert row["pred"] == "" and row["ood"] == "" and all(row[f"p_{c}"] == "" for c in CLASS_CODES)
        assert not (run["out"] / "masks" / f"{name}.png").exists()
    for name in run["inputs"]:
        assert rows[name]["error"] == "", rows[name]
    assert "3 analysed, 3 failed" in run["stderr"]


def test_progress_bar_on_stderr(run):
    assert "analysing" in run["stderr"] and "6/6" in run["stderr"], run["stderr"][-1000:]


def test_rows_and_masks_are_the_analyzers_results(run, repo_root):
    from core.inference import Analyzer
    from core.intake import load_image_file

    analyzer = Analyzer.load(repo_root / "weights")
    rows = {r["image"]: r for r in run["rows"]}
    shapes = set()
    for name, path in run["inputs"].items():
        row = rows[name]
        rgb = load_image_file(path)
        mask = cv2.imread(str(run["out"] / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert mask is not None and mask.dtype == np.uint8 and mask.ndim == 2, name
        assert mask.shape == rgb.shape[:2], (name, mask.shape, rgb.shape)  # the input image's size
        assert set(np.unique(mask)) <= {0, 255} and (mask == 255).any(), name
        shapes.add(mask.shape)
        probs = np.array([float(row[f"p_{c}"]) for c in CLASS_CODES])
        assert abs(probs.sum() - 1) < 1e-3 and (probs >= 0).all(), name
        assert row["pred"] == CLASS_CODES[int(probs.argmax())], name
        assert row["ood"] in ("0", "1"), name
        r = analyzer.analyze(rgb)
        assert row["pred"] == r.label, name
        np.testing.assert_allclose(probs, [r.probs[c] for c in CLASS_CODES], atol=1e-4, err_msg=name)
        assert row["ood"] == str(int(r.ood)), name
        assert np.array_equal(mask, r.mask), name
    assert shapes == {(450, 600), (150, 200), (137, 191)}
