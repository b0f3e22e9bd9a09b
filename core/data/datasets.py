"""Dataset readers: turn a dataset folder into one manifest table.

Manifest columns (MANIFEST_COLUMNS): image_id, image_path, mask_path ("" when absent), dx (class code),
source (ham10000 / isic2017 / acral / folder), lesion_id (the unit a split keeps together), age, sex, localization, dx_type, split ("" until split).

Every problem with a dataset (missing folder or CSV, missing column, unknown label, missing image file,
duplicate id) raises DatasetError whose message names the file and, where there is one,
the CSV row (1-based line number in the file, header = line 1) -- never a bare KeyError.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.classes import CLASS_CODES

MANIFEST_COLUMNS = [
    "image_id", "image_path", "mask_path", "dx", "source", "lesion_id",
    "age", "sex", "localization", "dx_type", "split",
]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
SOURCES = ("ham10000", "isic2017", "acral")
ISIC_DX_TYPE = "isic2017"  # dx_type of every ISIC 2017 row (the challenge labels give no confirmation method)
HAM_IMAGE_FOLDERS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images", ".")
HAM_MASK_FOLDERS = ("masks", "HAM10000_segmentations_lesion_tschandl", "segmentations")
ISIC_IMAGE_FOLDERS = ("images", ".")
ACRAL_REQUIRED_COLUMNS = ("image_id", "dx", "group_id")
ISIC_MASK_FOLDERS = ("masks", "segmentations")
#: How a lesion mask may be named after its image id (IMG.png, IMG_segmentation.png as ISIC and HAM10000 publish
#: them, IMG_lesion.png as PH2 does, IMG_mask.png, IMG_seg.png); any image extension. Checked in this order.
MASK_SUFFIXES = ("_segmentation", "_lesion", "_mask", "_seg")
#: Every layout the readers accept, in words (the Evaluate page and the error of an unreadable folder show it).
LAYOUTS_TEXT = (
    "a HAM10000-style folder (a `*metadata*.csv` with lesion_id, image_id, dx, and the images in images/ or the "
    "folder itself), an ISIC-2017-style folder (a `labels.csv` with image_id and a label column holding a class code "
    "or melanoma / seborrheic_keratosis / nevus, and the images in images/ or the folder itself), or one folder per "
    f"class named by its code ({', '.join(CLASS_CODES)}). Lesion masks are optional: a masks/ folder with one "
    "black-and-white image per image, named after the image id (IMG.png, or IMG" + ", IMG".join(MASK_SUFFIXES)
    + " with any image extension)")
HAM_REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
ISIC_LABEL_TO_DX = {
    "melanoma": "mel", "seborrheic_keratosis": "bkl", "seborrheic keratosis": "bkl", "nevus": "nv",
    "naevus": "nv",
}
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "training": "train", "testing": "test"}


class DatasetError(ValueError):
    """A dataset folder or file is missing, malformed or inconsistent; the message names the file."""


def data_dir_from_env(default: str | os.PathLike | None = None) -> Path | None:
    value = os.environ.get("DATA_DIR") or default
    return Path(value).expanduser() if value else None


# ---------------------------------------------------------------- discovery helpers
def _line(row: int) -> int:
    """0-based data row -> line number in the CSV file (header is line 1)."""
    return int(row) + 2


def _index_images(folders: list[Path]) -> dict[str, Path]:
    """Map image stem -> path over the given folders (non-recursive); the first folder wins on clashes."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise DatasetError(f"{folder}: cannot list folder ({exc})") from exc
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
                found.setdefault(os.path.splitext(name)[0], Path(entry.path))
    return found


def mask_image_id(stem: str) -> str:
    """The image id a mask file's stem names: the stem without its MASK_SUFFIXES entry (any case), if it has one."""
    lower = stem.lower()
    for suffix in MASK_SUFFIXES:
        if lower.endswith(suffix):
            return stem[:-len(suffix)]
    return stem


def _mask_index(folders: list[Path]) -> dict[str, Path]:
    return {mask_image_id(stem): path for stem, path in _index_images(folders).items()}


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    if not path.is_file():
        raise DatasetError(f"{path}: is not a file")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=True, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"{path}: file is empty (no header, no rows)") from exc
    except Exception as exc:  # pandas raises many types for bad CSVs
        raise DatasetError(f"{path}: cannot be read as CSV ({exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    if table.empty:
        raise DatasetError(f"{path}: has a header but no rows")
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, table.columns))}"
        )
    for column in table.columns:
        if table[column].dtype == object:
            table[column] = table[column].str.strip()
    return table.reset_index(drop=True)


def _check_ids(table: pd.DataFrame, csv_path: Path, column: str = "image_id") -> None:
    ids = table[column]
    empty = ids.isna() | (ids.fillna("") == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise DatasetError(f"{csv_path}: row {_line(row)} has an empty {column}")
    dup = ids.duplicated(keep=False)
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())
        first = ids.iloc[rows[0]]
        same = [_line(r) for r in rows if ids.iloc[r] == first]
        raise DatasetError(
            f"{csv_path}: {column} {first!r} appears more than once (rows {', '.join(map(str, same[:5]))})"
        )


def _check_labels(table: pd.DataFrame, column: str, csv_path: Path) -> None:
    values = table[column]
    bad = ~values.isin(CLASS_CODES)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = values.iloc[row]
        shown = "an empty label" if value is None or (isinstance(value, float) and np.isnan(value)) or value == "" \
            else f"unknown label {value!r}"
        raise DatasetError(
            f"{csv_path}: row {_line(row)} (image {table['image_id'].iloc[row]}) has {shown}; "
            f"expected one of {', '.join(CLASS_CODES)}"
        )


def _attach_files(
    table: pd.DataFrame, images: dict[str, Path], masks: dict[str, Path], csv_path: Path, looked_in: str
) -> pd.DataFrame:
    ids = table["image_id"].tolist()
    missing_rows = [row for row, image_id in enumerate(ids) if image_id not in images]
    if missing_rows:
        row = missing_rows[0]
        raise DatasetError(
            f"{csv_path}: row {_line(row)}: image file for {ids[row]!r} not found "
            f"(looked for {ids[row]}.jpg/.png/... in {looked_in}; "
            f"{len(missing_rows)} of {len(table)} images missing)"
        )
    table = table.copy()
    table["image_path"] = [str(images[i]) for i in ids]
    table["mask_path"] = [str(masks[i]) if i in masks else "" for i in ids]
    return table


def _finish(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for column in MANIFEST_COLUMNS:
        if column not in table.columns:
            table[column] = np.nan if column == "age" else ""
    table["age"] = pd.to_numeric(table["age"], errors="coerce")
    for column in ("image_id", "image_path", "dx", "source", "sex", "localization", "dx_type", "split",
                   "mask_path", "lesion_id"):
        table[column] = table[column].fillna("").astype(str)
    return table[MANIFEST_COLUMNS].reset_index(drop=True)


def _require_dir(root: Path, what: str) -> None:
    if not root.exists():
        raise DatasetError(f"{root}: {what} folder not found")
    if not root.is_dir():
        raise DatasetError(f"{root}: {what} path is not a folder")


# ---------------------------------------------------------------- readers
def read_ham10000(root: str | os.PathLike) -> pd.DataFrame:
    """HAM10000 as published: metadata CSV + image folder(s) (+ optional masks folder)."""
    root = Path(root)
    _require_dir(root, "HAM10000")
    candidates = sorted(root.glob("*metadata*.csv")) or sorted(root.glob("*.csv"))
    if not candidates:
        raise DatasetError(f"{root}: no HAM10000 metadata CSV (expected {root / 'HAM10000_metadata.csv'})")
    csv_path = candidates[0]
    table = _read_csv(csv_path, HAM_REQUIRED_COLUMNS)
    _check_ids(table, csv_path)
    table["dx"] = table["dx"].fillna("").astype(str).str.strip().str.lower()
    _check_labels(table, "dx", csv_path)
    empty_lesion = table["lesion_id"].isna() | (table["lesion_id"].fillna("") == "")
    if empty_lesion.any():
        row = int(np.flatnonzero(empty_lesion.to_numpy())[0])
        raise DatasetError(f"{csv_path}: row {_line(row)} (image {table['image_id'].iloc[row]}) has an empty lesion_id")
    images = _index_images([root / f for f in HAM_IMAGE_FOLDERS])
    if not images:
        raise DatasetError(f"{root}: no images found (looked in {', '.join(HAM_IMAGE_FOLDERS)})")
    masks = _mask_index([root / f for f in HAM_MASK_FOLDERS])
    looked_in = ", ".join(str(root / f) for f in HAM_IMAGE_FOLDERS if (root / f).is_dir())
    table = _attach_files(table, images, masks, csv_path, looked_in)
    table["source"] = "ham10000"
    table["split"] = ""
    return _finish(table)


def read_isic2017(root: str | os.PathLike) -> pd.DataFrame:
    """ISIC 2017 Part 3 labels (melanoma / seborrheic_keratosis columns, or a label column) + images (+ masks)."""
    root = Path(root)
    _require_dir(root, "ISIC 2017")
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        candidates = sorted(root.glob("*.csv"))
        csv_path = candidates[0] if candidates else csv_path
    table = _read_csv(csv_path, ("image_id",))
    _check_ids(table, csv_path)
    table["dx"] = _isic_dx(table, csv_path)
    images = _index_images([root / f for f in ISIC_IMAGE_FOLDERS])
    if not images:
        raise DatasetError(f"{root}: no images found (looked in {root / 'images'} and {root})")
    masks = _mask_index([root / f for f in ISIC_MASK_FOLDERS])
    looked_in = ", ".join(str(root / f) for f in ISIC_IMAGE_FOLDERS if (root / f).is_dir())
    table = _attach_files(table, images, masks, csv_path, looked_in)
    table["source"] = "isic2017"
    table["lesion_id"] = table["image_id"]
    table["dx_type"] = ISIC_DX_TYPE
    if "split" in table.columns:
        split = table["split"].fillna("").astype(str).str.strip().str.lower()
        split = split.map(lambda v: _SPLIT_ALIASES.get(v, v))
        bad = ~split.isin(SPLITS + ("",))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DatasetError(
                f"{csv_path}: row {_line(row)} (image {table['image_id'].iloc[row]}) has split "
                f"{table['split'].iloc[row]!r}; expected train, val (validation) or test"
            )
        table["split"] = split
    else:
        table["split"] = ""
    return _finish(table)


def read_acral(root: str | os.PathLike) -> pd.DataFrame:
    """ISIC Archive acral dermoscopy (palms, soles, nails): labels.csv with image_id, dx (a class code; empty where
    the archive says only "benign", which no class code names, so those rows are left out) and group_id (one
    lesion or patient: the unit a split keeps together); images in images/. No lesion masks."""
    root = Path(root)
    _require_dir(root, "acral")
    csv_path = root / "labels.csv"
    table = _read_csv(csv_path, ACRAL_REQUIRED_COLUMNS)
    _check_ids(table, csv_path)
    table["dx"] = table["dx"].fillna("").astype(str).str.lower()
    table = table[table["dx"] != ""].reset_index(drop=True)
    _check_labels(table, "dx", csv_path)
    images = _index_images([root / f for f in ISIC_IMAGE_FOLDERS])
    if not images:
        raise DatasetError(f"{root}: no images found (looked in {root / 'images'} and {root})")
    looked_in = ", ".join(str(root / f) for f in ISIC_IMAGE_FOLDERS if (root / f).is_dir())
    table = _attach_files(table, images, {}, csv_path, looked_in)
    table["source"] = "acral"
    group = table["group_id"].fillna("").astype(str)
    table["lesion_id"] = group.where(group != "", table["image_id"])
    for column, given in (("age", "age_approx"), ("localization", "site"), ("dx_type", "diagnosis_confirm_type")):
        if given in table.columns:
            table[column] = table[given]
    table["split"] = ""
    return _finish(table)


def _isic_dx(table: pd.DataFrame, csv_path: Path) -> pd.Series:
    if "label" in table.columns:
        labels = table["label"].fillna("").astype(str).str.strip().str.lower()
        dx = labels.map(lambda v: ISIC_LABEL_TO_DX.get(v, v))
    elif {"melanoma", "seborrheic_keratosis"} <= set(table.columns):
        flags = {}
        for column in ("melanoma", "seborrheic_keratosis"):
            values = pd.to_numeric(table[column], errors="coerce")
            bad = values.isna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DatasetError(
                    f"{csv_path}: row {_line(row)} (image {table['image_id'].iloc[row]}) has {column} "
                    f"{table[column].iloc[row]!r}; expected 0 or 1"
                )
            flags[column] = values.to_numpy() > 0.5
        both = flags["melanoma"] & flags["seborrheic_keratosis"]
        if both.any():
            row = int(np.flatnonzero(both)[0])
            raise DatasetError(
                f"{csv_path}: row {_line(row)} (image {table['image_id'].iloc[row]}) is marked both melanoma "
                "and seborrheic_keratosis"
            )
        dx = pd.Series(
            np.where(flags["melanoma"], "mel", np.where(flags["seborrheic_keratosis"], "bkl", "nv")), index=table.index
        )
    else:
        raise DatasetError(f"{csv_path}: needs a 'label' column or 'melanoma' and 'seborrheic_keratosis' columns")
    probe = table.assign(dx=dx)
    _check_labels(probe, "dx", csv_path)
    return dx


def read_class_folders(root: str | os.PathLike) -> pd.DataFrame:
    """A plain layout: ROOT/<class code>/<image files> (+ optional ROOT/masks/). Every image is its own lesion."""
    root = Path(root)
    _require_dir(root, "data")
    rows = []
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and p.name not in ISIC_MASK_FOLDERS)
    if not subfolders:
        raise DatasetError(f"{root}: no dataset found. Expected ham10000/ and/or isic2017/, or {LAYOUTS_TEXT}")
    if any(p.name.lower() in ("images", "image", "imgs") for p in subfolders):
        raise DatasetError(f"{root}: an images/ folder needs its labels: add a labels.csv or a *metadata*.csv next "
                           f"to it, or sort the images into one folder per class. Expected {LAYOUTS_TEXT}")
    unknown = [p.name for p in subfolders if p.name.lower() not in CLASS_CODES]
    if unknown:
        raise DatasetError(f"{root}: folder(s) {', '.join(unknown)} are not class codes. Expected {LAYOUTS_TEXT}")
    masks = _mask_index([root / f for f in ISIC_MASK_FOLDERS])
    seen: dict[str, Path] = {}
    for folder in subfolders:
        files = _index_images([folder])
        # a mask kept next to its image (IMG_lesion.png beside IMG.jpg) is that image's mask, not an image
        beside = {mask_image_id(stem): path for stem, path in files.items() if mask_image_id(stem) in files
                  and mask_image_id(stem) != stem}
        masks.update({image_id: path for image_id, path in beside.items() if image_id not in masks})
        for stem, path in sorted(files.items()):
            if mask_image_id(stem) in beside and mask_image_id(stem) != stem:
                continue
            if stem in seen:
                raise DatasetError(f"{path}: image id {stem!r} also appears as {seen[stem]}")
            seen[stem] = path
            rows.append({"image_id": stem, "image_path": str(path), "mask_path": str(masks.get(stem, "")),
                         "dx": folder.name.lower(), "lesion_id": stem})
    if not rows:
        raise DatasetError(f"{root}: no images found in class folders ({', '.join(p.name for p in subfolders)})")
    table = pd.DataFrame(rows)
    table["source"] = "folder"
    return _finish(table)


def load_manifest(data_dir: str | os.PathLike, sources: tuple[str, ...] = SOURCES) -> pd.DataFrame:
    """Read every dataset found under data_dir into one manifest.

    data_dir may be a parent holding ham10000/, isic2017/ and acral/, a HAM10000 folder, an ISIC 2017 folder,
    or a one-folder-per-class layout. `sources` limits which of SOURCES are read from a parent.
    """
    if isinstance(sources, str):
        sources = (sources,)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown source(s) {', '.join(map(repr, unknown))}; expected {', '.join(SOURCES)}")
    root = Path(data_dir).expanduser()
    _require_dir(root, "data")
    present = [s for s in SOURCES if (root / s).is_dir()]
    if present:
        wanted = [s for s in present if s in sources]
        if not wanted:
            raise DatasetError(
                f"{root}: holds {', '.join(present)} but none of the requested source(s) {', '.join(sources)}"
            )
        readers = {"ham10000": read_ham10000, "isic2017": read_isic2017, "acral": read_acral}
        parts = [readers[s](root / s) for s in wanted]
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    if list(root.glob("*metadata*.csv")):
        return read_ham10000(root)
    if (root / "labels.csv").is_file():
        return read_isic2017(root)
    return read_class_folders(root)
