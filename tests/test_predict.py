"""The predict CLI contract (issue 3), run as users run it: `python -m core.analysis.predict PATH... --out OUT_DIR
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

from core.data.classes import CLASS_CODES

EXPECTED_COLUMNS = ["image", "age", "sex", "site", "pred", "p_akiec", "p_bcc", "p_bkl", "p_df", "p_mel", "p_nv", "p_vasc",
                    "mel_score", "refer", "triage", "prediction_set", "uncertainty_level", "ood_level", "ood_reason", "quality", "model_version", "error"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir, repo_root, clinical_photo):
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
    photo = folder / "photo_china.jpg"  # a real photograph, not dermoscopy
    from sklearn.datasets import load_sample_image

    cv2.imwrite(str(photo), load_sample_image("china.jpg")[:, :, ::-1])
    shutil.copy(clinical_photo, folder / "clinical_photo.jpg")
    metadata = root / "metadata.csv"
    metadata.write_text(f"image,age,sex,site\n{small.name},55,female,back\ncrop_odd,,unknown,\n")
    out = root / "out"
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    proc = subprocess.run(
        [sys.executable, "-m", "core.analysis.predict", str(folder), str(small), str(missing), "--out", str(out),
         "--weights", str(repo_root / "weights"), "--metadata", str(metadata)],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "predictions.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames
        rows = list(reader)
    inputs = {fullres.stem: fullres, small.stem: small, "crop_odd": crop_path}
    return {"out": out, "header": header, "rows": rows, "stderr": proc.stderr, "inputs": inputs, "photo": photo,
            "metadata": metadata}


def test_csv_columns_and_one_row_per_input(run):
    assert run["header"] == EXPECTED_COLUMNS
    names = [r["image"] for r in run["rows"]]
    assert sorted(names) == sorted([*run["inputs"], "notes", "truncated", "does_not_exist", "photo_china",
                                          "clinical_photo"]), names
    assert "readme" not in names  # folders are scanned for image suffixes only


def test_bad_files_get_an_error_row_and_the_rest_go_on(run):
    rows = {r["image"]: r for r in run["rows"]}
    expected_errors = {"notes": "not an image", "truncated": "damaged or truncated", "does_not_exist": "not found"}
    for name, text in expected_errors.items():
        row = rows[name]
        assert text in row["error"], (name, row["error"])
        assert row["pred"] == "" and row["ood_level"] == "" and all(row[f"p_{c}"] == "" for c in CLASS_CODES)
        assert not (run["out"] / "masks" / f"{name}.png").exists()
    for name in run["inputs"]:
        assert rows[name]["error"] == "", rows[name]
    assert "5 analysed, 3 failed" in run["stderr"]


def test_progress_bar_on_stderr(run):
    assert "analysing" in run["stderr"] and "8/8" in run["stderr"], run["stderr"][-1000:]


@pytest.mark.parametrize("image", ["photo_china", "clinical_photo"])
def test_a_photograph_that_is_not_dermoscopy_gets_no_diagnosis(run, image):
    row = {r["image"]: r for r in run["rows"]}[image]
    assert row["ood_level"] in ("clinical_photo", "not_skin") and row["ood_reason"].startswith("This ")
    assert row["pred"] == row["mel_score"] == row["refer"] == row["prediction_set"] == ""
    assert all(row[f"p_{c}"] == "" for c in CLASS_CODES)
    assert row["triage"] == "not_assessed" and row["error"] == ""


def test_a_clinical_photo_is_marked_as_one(run):
    from core.decisions.ood import CLINICAL_PHOTO_TEXT

    row = {r["image"]: r for r in run["rows"]}["clinical_photo"]
    assert row["ood_level"] == "clinical_photo" and row["ood_reason"] == CLINICAL_PHOTO_TEXT


def test_metadata_is_validated_and_copied(run, tmp_path, repo_root):
    rows = {r["image"]: r for r in run["rows"]}
    assert (rows["ISIC_0024306"]["age"], rows["ISIC_0024306"]["sex"], rows["ISIC_0024306"]["site"]) == ("55", "female", "back")
    assert (rows["crop_odd"]["age"], rows["crop_odd"]["sex"], rows["crop_odd"]["site"]) == ("", "", "")  # missing fields
    bad = tmp_path / "bad.csv"
    bad.write_text("image,age,sex,site\nx.jpg,212,female,back\n")
    proc = subprocess.run([sys.executable, "-m", "core.analysis.predict", str(run["inputs"]["crop_odd"]), "--out", str(tmp_path / "o"),
                           "--metadata", str(bad)], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "row 2 (x): age 212 is outside 0-120 years" in proc.stderr


def test_rows_and_masks_are_the_analyzers_results(run, repo_root):
    from core.analysis.inference import Analyzer
    from core.io.intake import load_image_file
    from core.data.patient_context import read_context_csv

    analyzer = Analyzer.load(repo_root / "weights")
    contexts = read_context_csv(run["metadata"])
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
        r = analyzer.analyze(rgb, context=contexts.get(name))  # the CLI passes each image's context
        assert row["pred"] == r.label, name
        np.testing.assert_allclose(probs, [r.probs[c] for c in CLASS_CODES], atol=1e-4, err_msg=name)
        assert (row["ood_level"], row["uncertainty_level"]) == (r.ood_level, r.uncertainty_level), name
        assert row["refer"] == ("yes" if r.mel_score >= analyzer.referral.threshold else "no"), name
        assert row["triage"] == r.triage.level and row["prediction_set"] == "|".join(r.prediction_set), name
        assert float(row["mel_score"]) == pytest.approx(r.mel_score, abs=1e-5), name
        assert np.array_equal(mask, r.mask), name
    assert shapes == {(450, 600), (150, 200), (137, 191)}


def test_the_cli_refuses_a_card_without_a_rule_in_words(tmp_path, repo_root, capsys):
    """A model card that lacks its triage section: the CLI names it and stops (exit 2), no traceback, no rows."""
    import json

    from core.analysis.predict import main

    weights = tmp_path / "weights"
    weights.mkdir()
    card = json.loads((repo_root / "weights" / "model_card.json").read_text())
    del card["triage"]
    (weights / "model_card.json").write_text(json.dumps(card))
    image = sorted((repo_root / "docs" / "screenshots").glob("*.png"))[0]
    with pytest.raises(SystemExit) as stop:
        main([str(image), "--out", str(tmp_path / "out"), "--weights", str(weights)])
    assert stop.value.code == 2
    assert "has no `triage` section" in capsys.readouterr().err
    assert not (tmp_path / "out" / "predictions.csv").exists()
