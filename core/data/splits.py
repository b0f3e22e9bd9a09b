"""Leak-free splits of a manifest: grouped by lesion, stratified by diagnosis; split files.

HAM10000 (and folder data) is split by `lesion_id` (byte-identical duplicates joined) with scikit-learn's
StratifiedGroupKFold algorithm (stratified_group_folds), about 70/15/15. ISIC 2017 with only an official
train/validation split: its official validation set becomes our `test` split (a second test set from other sources:
nothing is chosen on it) and a stratified 15 % of its official train set becomes our `val` split (checkpoints,
thresholds and temperatures are chosen on HAM10000 val + this part). The ISIC 2017 train image that duplicates a
validation image is left out (split ""). Problems raise core.data.datasets.DatasetError naming the file/row.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.classes import CLASS_CODES
from core.data.datasets import MANIFEST_COLUMNS, SPLITS, DatasetError, _line, _read_csv

# Byte-identical HAM10000 files (see the data README); they must always share a split.
HAM_DUPLICATE_PAIRS = (("ISIC_0024366", "ISIC_0029861"), ("ISIC_0024777", "ISIC_0029938"))
# ISIC 2017 train images that duplicate an official validation image (data README): never trained on.
ISIC_DUPLICATES_OF_VALIDATION = ("ISIC_0012970",)
# Folds used by the grouped split: 20 folds give 5 % granularity (15 % = 3 folds).
_N_FOLDS = 20


def _check_manifest(manifest: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    if not isinstance(manifest, pd.DataFrame):
        raise DatasetError(f"{what}: expected a manifest DataFrame, got {type(manifest).__name__}")
    missing = [c for c in columns if c not in manifest.columns]
    if missing:
        raise DatasetError(f"{what}: manifest is missing column(s) {', '.join(missing)}")


def _grouped_split(table: pd.DataFrame, groups: pd.Series, seed: int, val_frac: float, test_frac: float) -> pd.Series:
    """Split rows by group, stratified by dx, about (1-val-test)/val/test; every class in every split
    whenever the class has at least three groups."""
    y = table["dx"].to_numpy()
    g = groups.to_numpy()
    n_groups = len(pd.unique(g))
    if n_groups < 3:
        raise DatasetError(f"source {table['source'].iloc[0]!r}: needs at least 3 lesions for train/val/test, has {n_groups}")
    largest_class = int(pd.Series(y).value_counts().max())
    n_folds = max(3, min(_N_FOLDS, n_groups, largest_class))
    n_test = max(1, round(test_frac * n_folds))
    n_val = max(1, round(val_frac * n_folds))
    while n_test + n_val >= n_folds and (n_test > 1 or n_val > 1):
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    folds = stratified_group_folds(y, g, n_folds, seed)
    split = np.where(folds < n_test, "test", np.where(folds < n_test + n_val, "val", "train")).astype(object)
    split = _fill_missing_classes(split, y, g, seed)
    return pd.Series(split, index=table.index, dtype=object)


def stratified_group_folds(y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """The fold (0..n_folds-1) of each row: scikit-learn's StratifiedGroupKFold(n_folds, shuffle=True,
    random_state=seed) algorithm, with the n_folds candidate folds of each group scored in one array operation.

    Groups are shuffled, ordered by how unevenly their rows spread over the classes, and each goes to the fold that
    keeps the per-class shares most even (ties: the fold with fewer rows). The same folds as scikit-learn 1.9
    (tests/test_splits.py compares them), 17x faster (0.4 vs 6.7 s for HAM10000), and fixed here rather than in
    whichever scikit-learn is installed, so the splits the shipped model was trained on cannot move."""
    rng = np.random.RandomState(seed)
    _, y_inv, y_cnt = np.unique(y, return_inverse=True, return_counts=True)
    _, groups_inv, groups_cnt = np.unique(groups, return_inverse=True, return_counts=True)
    counts = np.zeros((len(groups_cnt), len(y_cnt)))            # rows of each class, per group
    np.add.at(counts, (groups_inv, y_inv), 1)
    perm = np.arange(len(groups_cnt))
    rng.shuffle(perm)
    counts = counts[perm]
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(perm.size)
    groups_inv = inv_perm[groups_inv]
    per_fold = np.zeros((n_folds, len(y_cnt)))
    fold_of_group = np.empty(len(groups_cnt), dtype=int)
    candidates = np.arange(n_folds)
    for group in np.argsort(-np.std(counts, axis=1), kind="stable"):
        trial = np.repeat(per_fold[None], n_folds, axis=0)      # trial[i]: the folds with this group in fold i
        trial[candidates, candidates] += counts[group]
        unevenness = np.mean(np.std(trial / y_cnt, axis=1), axis=1)
        sizes = per_fold.sum(axis=1)
        best, best_unevenness, best_size = 0, np.inf, np.inf
        for i in range(n_folds):
            value = unevenness[i]
            tied = abs(value - best_unevenness) <= 1e-8 + 1e-5 * abs(best_unevenness)   # np.isclose, as sklearn
            if value < best_unevenness or (tied and sizes[i] < best_size):
                best, best_unevenness, best_size = i, value, sizes[i]
        per_fold[best] += counts[group]
        fold_of_group[group] = best
    return fold_of_group[groups_inv]


def _fill_missing_classes(split: np.ndarray, y: np.ndarray, g: np.ndarray, seed: int) -> np.ndarray:
    """Move whole groups so that every class with >= 3 groups appears in every split (deterministic)."""
    rng = np.random.default_rng(seed)
    split = split.copy()
    for code in sorted(set(y)):
        is_code = y == code
        if len(set(g[is_code])) < len(SPLITS):
            continue
        for target in SPLITS:
            if (is_code & (split == target)).any():
                continue
            # donor: the split holding the most groups of this class
            donors = {s: sorted(set(g[is_code & (split == s)])) for s in SPLITS if s != target}
            donor = max(donors, key=lambda s: (len(donors[s]), s == "train"))
            if len(donors[donor]) < 2:
                continue
            sizes = {grp: int((g == grp).sum()) for grp in donors[donor]}
            smallest = min(sizes.values())
            choices = [grp for grp in donors[donor] if sizes[grp] == smallest]
            chosen = choices[int(rng.integers(len(choices)))]
            split[g == chosen] = target
    return split


def _ham_groups(table: pd.DataFrame) -> pd.Series:
    groups = table["lesion_id"].where(table["lesion_id"] != "", table["image_id"]).copy()
    by_image = dict(zip(table["image_id"], groups))
    for first, second in HAM_DUPLICATE_PAIRS:
        if first in by_image and second in by_image:
            old = by_image[second]
            groups[groups == old] = by_image[first]  # the whole lesion of the duplicate joins the other one
    return groups


def assign_splits(manifest: pd.DataFrame, seed: int = 42, val_frac: float = 0.15, test_frac: float = 0.15) -> pd.DataFrame:
    """Return a copy with `split` filled in.

    HAM10000 and folder data: grouped by lesion (byte-identical duplicates joined), stratified by diagnosis
    with StratifiedGroupKFold's algorithm (stratified_group_folds), about 70/15/15, deterministic for a seed. ISIC 2017 with an official split on
    every row: see `isic_roles` (official validation -> test, 15 % of official train -> val).
    """
    _check_manifest(manifest, ("image_id", "dx", "source", "lesion_id", "split"), "assign_splits")
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"val_frac={val_frac} and test_frac={test_frac} must be in (0, 1) and sum below 1")
    if manifest.empty:
        raise DatasetError("assign_splits: manifest has no rows")
    bad = ~manifest["dx"].isin(CLASS_CODES)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DatasetError(
            f"assign_splits: manifest row {row} (image {manifest['image_id'].iloc[row]}) has unknown label "
            f"{manifest['dx'].iloc[row]!r}"
        )
    out = manifest.copy()
    out["split"] = out["split"].fillna("").astype(str)
    for source, part in out.groupby("source", sort=True):
        if source == "isic2017" and part["split"].isin(SPLITS).all():
            out.loc[part.index, "split"] = isic_roles(part, seed, val_frac)
            continue
        part = part.assign(lesion_id=part["lesion_id"].fillna("").astype(str))
        out.loc[part.index, "split"] = _grouped_split(part, _ham_groups(part), seed, val_frac, test_frac)
    return out


def isic_roles(part: pd.DataFrame, seed: int, val_frac: float) -> pd.Series:
    """ISIC 2017 official split -> our roles. With an official test set, the official split is kept. Otherwise the
    official validation set is our test split and a stratified `val_frac` of official train is our val split."""
    from sklearn.model_selection import train_test_split

    split = part["split"].copy()
    if (split == "test").any():
        return split
    split[split == "val"] = "test"
    train = split.index[(split == "train") & ~part["image_id"].isin(ISIC_DUPLICATES_OF_VALIDATION)]
    _, held = train_test_split(train, test_size=val_frac, stratify=part.loc[train, "dx"], random_state=seed)
    split[held] = "val"
    split[part["image_id"].isin(ISIC_DUPLICATES_OF_VALIDATION)] = ""
    return split


def lesion_leaks(manifest: pd.DataFrame) -> list[str]:
    """lesion_ids (per source) that occur in more than one split; [] for a leak-free split."""
    _check_manifest(manifest, ("source", "lesion_id", "split"), "lesion_leaks")
    groups = manifest.loc[manifest["lesion_id"] != ""].groupby(["source", "lesion_id"])["split"].nunique()
    return sorted(f"{s}:{lid}" for (s, lid), n in groups.items() if n > 1)


def read_split_file(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    table = _read_csv(path, ("image_id", "source", "split"))
    for column in ("image_id", "source"):
        empty = table[column].isna() | (table[column].fillna("") == "")
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise DatasetError(f"{path}: row {_line(row)} has an empty {column}")
    dup = table.duplicated(subset=["source", "image_id"], keep="first")
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise DatasetError(
            f"{path}: row {_line(row)} lists {table['source'].iloc[row]}/{table['image_id'].iloc[row]} a second time"
        )
    bad = ~table["split"].isin(SPLITS)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DatasetError(
            f"{path}: row {_line(row)} (image {table['image_id'].iloc[row]}) has split {table['split'].iloc[row]!r}; "
            "expected train, val or test"
        )
    return table[["image_id", "source", "split"]]


def apply_split_file(manifest: pd.DataFrame, path: str | os.PathLike) -> pd.DataFrame:
    """Take splits from a file written by `python -m train.splits`; rows it does not list are dropped."""
    _check_manifest(manifest, tuple(MANIFEST_COLUMNS), "apply_split_file")
    splits = read_split_file(path)
    merged = manifest.drop(columns=["split"]).merge(splits, on=["image_id", "source"], how="inner")
    if merged.empty:
        raise DatasetError(f"{path}: none of its image_id/source pairs match the dataset")
    return merged[MANIFEST_COLUMNS].reset_index(drop=True)




def split_by(manifest: pd.DataFrame, seed: int | None, file: str | os.PathLike | None) -> pd.DataFrame:
    """The manifest with the split a model was trained on: its split file when it had one, else assign_splits with
    its seed (what a model card's `split` and a run's history.json config record)."""
    if file:
        return apply_split_file(manifest, file)
    if seed is None:
        raise DatasetError("split_by: give the split's seed or its split file")
    return assign_splits(manifest, seed)
