"""Leak-free, stratified, deterministic splits (core.data.datasets.assign_splits) and the `train.splits` CLI."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from core.data.classes import CLASS_CODES
from core.data.datasets import SPLITS, load_manifest
from core.data.splits import (HAM_DUPLICATE_PAIRS, apply_split_file, assign_splits, lesion_leaks,
                              stratified_group_folds)
from train import splits as splits_cli


def test_no_lesion_in_two_splits(ham_split):
    per_lesion = ham_split.groupby("lesion_id")["split"].nunique()
    assert per_lesion.max() == 1
    assert lesion_leaks(ham_split) == []
    assert set(ham_split["split"]) == set(SPLITS)


def test_byte_identical_duplicates_share_a_split(ham_split):
    by_id = ham_split.set_index("image_id")["split"]
    for first, second in HAM_DUPLICATE_PAIRS:
        assert by_id[first] == by_id[second], (first, second)


def test_split_sizes_are_about_70_15_15(ham_split):
    share = ham_split["split"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.70, abs=0.02)
    assert share["val"] == pytest.approx(0.15, abs=0.02)
    assert share["test"] == pytest.approx(0.15, abs=0.02)


def test_every_class_in_every_split_with_the_overall_proportions(ham_split):
    overall = ham_split["dx"].value_counts(normalize=True)
    for split in SPLITS:
        part = ham_split[ham_split["split"] == split]
        counts = part["dx"].value_counts()
        assert set(counts.index) == set(CLASS_CODES), split
        share = part["dx"].value_counts(normalize=True)
        for code in CLASS_CODES:
            assert abs(share[code] - overall[code]) < 0.03, (split, code, share[code], overall[code])


def test_isic2017_official_validation_is_test_and_a_stratified_part_of_train_is_val(isic_manifest):
    split = assign_splits(isic_manifest, seed=42)
    official = isic_manifest["split"]
    # the official validation set is a test set: nothing is chosen on it
    assert (split.loc[official == "val", "split"] == "test").all()
    assert split.loc[split["split"] == "test", "dx"].value_counts().to_dict() == {"nv": 78, "bkl": 42, "mel": 30}
    # ~15 % of official train, stratified, is our val part; the rest trains; the duplicate of a val image is left out
    from_train = split.loc[official == "train"]
    assert set(from_train["split"]) == {"train", "val", ""}
    assert from_train.loc[from_train["image_id"] == "ISIC_0012970", "split"].item() == ""
    val = from_train[from_train["split"] == "val"]
    assert 0.14 < len(val) / len(from_train) < 0.16
    share = val["dx"].value_counts(normalize=True)
    overall = from_train["dx"].value_counts(normalize=True)
    for code in ("mel", "bkl", "nv"):
        assert abs(share[code] - overall[code]) < 0.01, code
    assert (assign_splits(isic_manifest, seed=42)["split"] == split["split"]).all()


def test_folds_are_scikit_learns_stratified_group_kfold():
    """The vectorised fold assignment gives scikit-learn's folds, ties (np.isclose) included: small random sets with
    few classes and many equal group profiles."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    rng = np.random.default_rng(0)
    compared = 0
    for trial in range(60):
        n, k = int(rng.integers(20, 300)), int(rng.integers(2, 6))
        y, groups = rng.integers(0, k, n), rng.integers(0, max(3, n // int(rng.integers(1, 4))), n)
        n_folds = int(min(rng.integers(3, 10), len(np.unique(groups)), np.bincount(y).max()))
        expected = np.empty(n, dtype=int)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=trial)
            for fold, (_, held) in enumerate(splitter.split(np.zeros(n), y, groups)):
                expected[held] = fold
        assert (stratified_group_folds(y, groups, n_folds, trial) == expected).all(), trial
        compared += 1
    assert compared == 60


def test_the_shipped_models_test_images_are_still_the_test_split(ham_split):
    """weights/test_predictions.csv lists the HAM10000 test images the shipped model was evaluated on: the split
    code must still put exactly those images, and only those, in test."""
    from apptest_support import WEIGHTS

    shipped = pd.read_csv(WEIGHTS / "test_predictions.csv", usecols=["image_id", "source"])
    shipped = set(shipped.loc[shipped["source"] == "ham10000", "image_id"])
    assert shipped == set(ham_split.loc[ham_split["split"] == "test", "image_id"])


def test_same_seed_same_split_other_seed_other_split(ham_manifest):
    subset = ham_manifest.iloc[:1000]
    a = assign_splits(subset, seed=3)
    b = assign_splits(subset, seed=3)
    c = assign_splits(subset, seed=4)
    assert (a["split"] == b["split"]).all()
    assert (a["split"] != c["split"]).mean() > 0.1
    assert lesion_leaks(c) == []
    # splitting does not touch the input
    assert (subset["split"] == "").all()


def test_every_class_in_every_split_on_a_small_dataset(tiny_ham_factory, tmp_path):
    manifest = load_manifest(tiny_ham_factory(tmp_path / "ham", per_class=3, images_per_lesion=2))
    for seed in range(5):
        split = assign_splits(manifest, seed=seed)
        assert lesion_leaks(split) == []
        table = pd.crosstab(split["dx"], split["split"])
        assert (table[list(SPLITS)] > 0).all().all(), (seed, table)


def test_cli_writes_a_valid_leak_free_file_matching_the_library(data_dir, ham_split, tmp_path, capsys):
    out = tmp_path / "nested" / "splits.csv"
    assert splits_cli.main(["--data-dir", str(data_dir), "--out", str(out), "--seed", "42"]) == 0
    printed = capsys.readouterr().out
    for code in CLASS_CODES:
        assert code in printed
    assert "10015" in printed and "2150" in printed

    written = pd.read_csv(out)
    assert list(written.columns) == ["image_id", "source", "split"]
    # the ISIC 2017 train duplicate of a validation image is left out
    assert written.groupby("source").size().to_dict() == {"ham10000": 10_015, "isic2017": 2_149, "acral": 1_603}
    assert set(written["split"]) == set(SPLITS)

    # read back through apply_split_file: the HAM part is exactly the in-process seed-42 split
    full = load_manifest(data_dir)
    applied = apply_split_file(full, out)
    assert len(applied) == len(full) - 1
    assert lesion_leaks(applied) == []
    ham = applied[applied["source"] == "ham10000"].set_index("image_id")["split"]
    expected = ham_split.set_index("image_id")["split"]
    assert (ham.loc[expected.index] == expected).all()
    isic = applied[applied["source"] == "isic2017"]
    assert isic.groupby("split").size().to_dict() == {"train": 1699, "val": 300, "test": 150}


def test_cli_as_a_module_and_its_errors(repo_root, tiny_ham, tmp_path):
    out = tmp_path / "s.csv"
    ok = subprocess.run(
        [sys.executable, "-m", "train.splits", "--data-dir", str(tiny_ham), "--out", str(out), "--seed", "1"],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    written = pd.read_csv(out)
    assert len(written) == 28 and set(written["split"]) == set(SPLITS)
    assert "wrote 28 rows" in ok.stdout

    missing = tmp_path / "does-not-exist"
    assert splits_cli.main(["--data-dir", str(missing), "--out", str(tmp_path / "x.csv")]) == 2
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(SystemExit):
        splits_cli.main(["--out", str(out)])  # --data-dir is required


def test_split_table_lists_counts(ham_split):
    text = splits_cli.split_table(ham_split)
    nv_line = next(line for line in text.splitlines() if line.startswith("nv"))
    counts = [int(x) for x in nv_line.split()[1:]]
    assert sum(counts[:3]) == counts[3] == 6705
