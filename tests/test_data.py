"""core.data.datasets, core.data.splits and core.data.dataset_summary on the real HAM10000 / ISIC 2017 / acral folders, and its error paths on synthetic folders."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from core.data.classes import CLASS_CODES
from core.data.datasets import (MANIFEST_COLUMNS, DatasetError, data_dir_from_env, load_manifest, read_class_folders,
                                read_ham10000, read_isic2017)
from core.data.splits import apply_split_file, assign_splits, lesion_leaks, read_split_file
from core.data.dataset_summary import dataset_summary

HAM_COUNTS = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}
ISIC_TRAIN = {"mel": 374, "bkl": 254, "nv": 1372}
ISIC_VAL = {"mel": 30, "bkl": 42, "nv": 78}
ACRAL_LABELLED = 1_603


# ---------------------------------------------------------------- real data
def test_ham_manifest_matches_the_published_counts(ham_manifest):
    assert list(ham_manifest.columns) == MANIFEST_COLUMNS
    assert len(ham_manifest) == 10_015
    assert ham_manifest["image_id"].is_unique
    assert ham_manifest["dx"].value_counts().to_dict() == HAM_COUNTS
    assert ham_manifest["lesion_id"].nunique() == 7_470
    assert set(ham_manifest["source"]) == {"ham10000"}
    assert (ham_manifest["split"] == "").all()


def test_ham_manifest_points_at_existing_image_and_mask_files(ham_manifest):
    assert (ham_manifest["mask_path"] != "").all()
    for column in ("image_path", "mask_path"):
        paths = ham_manifest[column].map(Path)
        assert paths.map(Path.is_file).all(), column
    stems = ham_manifest["image_path"].map(lambda p: Path(p).stem)
    assert (stems == ham_manifest["image_id"]).all()
    masks = ham_manifest["mask_path"].map(lambda p: Path(p).name)
    assert (masks == ham_manifest["image_id"] + "_segmentation.png").all()
    assert ham_manifest["age"].dtype.kind == "f"


def test_isic2017_manifest_keeps_official_split_and_counts(isic_manifest):
    assert len(isic_manifest) == 2_150
    assert set(isic_manifest["source"]) == {"isic2017"}
    for split, expected in (("train", ISIC_TRAIN), ("val", ISIC_VAL)):
        part = isic_manifest[isic_manifest["split"] == split]
        assert part["dx"].value_counts().to_dict() == expected, split
    assert (isic_manifest["mask_path"] != "").all()
    assert (isic_manifest["lesion_id"] == isic_manifest["image_id"]).all()


def test_full_manifest_combines_every_source_without_id_clashes(data_dir, ham_manifest):
    full = load_manifest(data_dir)
    assert full.groupby("source").size().to_dict() == {"ham10000": 10_015, "isic2017": 2_150, "acral": ACRAL_LABELLED}
    assert full["image_id"].is_unique  # the README: the datasets share no ids
    # pointing straight at a dataset folder gives the same rows
    direct = load_manifest(data_dir / "ham10000")
    pd.testing.assert_frame_equal(direct, ham_manifest)


def test_acral_is_read_with_its_labelled_rows_grouped_and_split_by_group(data_dir):
    acral = load_manifest(data_dir, ("acral",))
    # 1,672 images, of which 69 the archive calls only "benign" (no class code): those are left out
    assert len(acral) == ACRAL_LABELLED
    assert acral["dx"].value_counts().to_dict() == {"nv": 1_309, "mel": 291, "bkl": 3}
    assert (acral["mask_path"] == "").all() and (acral["source"] == "acral").all()
    labels = pd.read_csv(data_dir / "acral" / "labels.csv", dtype=str).set_index("image_id")
    assert (acral["lesion_id"].to_numpy() == labels.loc[acral["image_id"], "group_id"].to_numpy()).all()
    split = assign_splits(acral, seed=42)
    assert not lesion_leaks(split)
    shares = split["split"].value_counts(normalize=True)
    assert 0.6 < shares["train"] < 0.8 and 0.1 < shares["val"] < 0.2 and 0.1 < shares["test"] < 0.2
    for part in ("train", "val", "test"):  # melanomas in every split
        assert (split.loc[split["split"] == part, "dx"] == "mel").sum() >= 30


def test_dataset_summary_is_json_ready_and_counts_per_split(ham_split):
    summary = dataset_summary(ham_split)
    json.dumps(summary)
    assert summary["all"]["n_images"] == 10_015
    assert summary["all"]["source"] == {"ham10000": 10_015}
    assert summary["all"]["dx"] == HAM_COUNTS
    assert summary["all"]["with_mask"] == 10_015
    assert set(summary["splits"]) == {"train", "val", "test"}
    assert sum(s["n_images"] for s in summary["splits"].values()) == 10_015
    for code in CLASS_CODES:
        assert sum(s["dx"][code] for s in summary["splits"].values()) == HAM_COUNTS[code]
    assert sum(summary["all"]["sex"].values()) == 10_015
    ages = summary["all"]["age"]
    assert 40 < ages["mean"] < 65 and ages["missing"] == int(ham_split["age"].isna().sum())


def test_images_per_source_of_every_split(data_dir, ham_split):
    """Per-source split counts: from the summary's own source counts, and the same from a summary written before
    they existed (ISIC 2017 told apart by its dx_type), both equal to counting the manifest."""
    from core.data.dataset_summary import images_per_source
    from core.data.datasets import load_manifest
    from core.data.splits import assign_splits

    both = assign_splits(load_manifest(data_dir, ("ham10000", "isic2017")), seed=42)  # the sources of old summaries
    summary = dataset_summary(both)
    old_style = json.loads(json.dumps(summary))
    for part in [old_style["all"], *old_style["splits"].values()]:
        del part["source"]
    for split in ("train", "val", "test"):
        expected = both[both["split"] == split].groupby("source").size().to_dict()
        assert images_per_source(summary, summary["splits"][split]) == expected, split
        assert images_per_source(old_style, old_style["splits"][split]) == expected, split
    assert images_per_source(summary, summary["all"]) == {"ham10000": 10_015, "isic2017": 2_150}
    assert images_per_source({"sources": ["ham10000", "folders"]}, {"n_images": 5}) == {}


def test_data_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert data_dir_from_env() == tmp_path
    monkeypatch.delenv("DATA_DIR")
    assert data_dir_from_env() is None
    assert data_dir_from_env("x/y") == Path("x/y")


# ---------------------------------------------------------------- synthetic layouts
def test_official_download_layout_is_read(tiny_ham):
    manifest = load_manifest(tiny_ham)
    assert len(manifest) == 28
    assert manifest["dx"].value_counts().to_dict() == {c: 4 for c in CLASS_CODES}
    assert {Path(p).parent.name for p in manifest["image_path"]} == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    assert all(Path(p).parent.name == "HAM10000_segmentations_lesion_tschandl" for p in manifest["mask_path"])


def test_isic_layout_with_flag_columns(tmp_path, tiny_ham_factory):
    ham = tiny_ham_factory(tmp_path / "src", per_class=1, layout="flat")
    root = tmp_path / "isic"
    (root / "images").mkdir(parents=True)
    ids = sorted(p.stem for p in (ham / "images").glob("*.jpg"))[:3]
    for i in ids:
        (root / "images" / f"{i}.jpg").write_bytes((ham / "images" / f"{i}.jpg").read_bytes())
    (root / "labels.csv").write_text(
        "image_id,melanoma,seborrheic_keratosis,split\n"
        f"{ids[0]},1.0,0.0,train\n{ids[1]},0.0,1.0,validation\n{ids[2]},0,0,train\n"
    )
    manifest = read_isic2017(root)
    assert manifest["dx"].tolist() == ["mel", "bkl", "nv"]
    assert manifest["split"].tolist() == ["train", "val", "train"]
    assert (manifest["mask_path"] == "").all()


def test_class_folder_layout(tmp_path, tiny_ham_factory):
    ham = tiny_ham_factory(tmp_path / "src", per_class=1, layout="flat")
    root = tmp_path / "folders"
    for n, src in enumerate(sorted((ham / "images").glob("*.jpg"))):
        code = CLASS_CODES[n % len(CLASS_CODES)]
        (root / code).mkdir(parents=True, exist_ok=True)
        (root / code / src.name).write_bytes(src.read_bytes())
    manifest = load_manifest(root)
    assert set(manifest["source"]) == {"folder"} and len(manifest) == 7
    assert sorted(manifest["dx"]) == sorted(CLASS_CODES)


def test_masks_named_in_the_common_public_ways_are_found(tmp_path, tiny_ham_factory):
    """IMG.png, IMG_segmentation.png (ISIC, HAM10000), IMG_lesion.png (PH2), IMG_mask.png, IMG_seg.png; in masks/ of an
    ISIC-style folder, in masks/ of a class-folder layout, or beside the image in its class folder."""
    ham = tiny_ham_factory(tmp_path / "src", per_class=1, layout="flat")
    sources = sorted((ham / "images").glob("*.jpg"))[:6]
    suffixes = ("", "_segmentation", "_lesion", "_Mask", "_seg")
    isic = tmp_path / "isic"
    (isic / "images").mkdir(parents=True)
    (isic / "masks").mkdir()
    for src, suffix in zip(sources, suffixes):
        (isic / "images" / src.name).write_bytes(src.read_bytes())
        (isic / "masks" / f"{src.stem}{suffix}.png").write_bytes(b"mask")
    (isic / "images" / sources[5].name).write_bytes(sources[5].read_bytes())  # this one has no mask
    (isic / "labels.csv").write_text("image_id,label\n" + "".join(f"{s.stem},nv\n" for s in sources))
    manifest = load_manifest(isic).set_index("image_id")
    for src, suffix in zip(sources, suffixes):
        assert manifest.loc[src.stem, "mask_path"] == str(isic / "masks" / f"{src.stem}{suffix}.png")
    assert manifest.loc[sources[5].stem, "mask_path"] == ""

    folders = tmp_path / "folders"
    (folders / "mel").mkdir(parents=True)
    (folders / "masks").mkdir()
    for src in sources[:2]:
        (folders / "mel" / src.name).write_bytes(src.read_bytes())
    (folders / "masks" / f"{sources[0].stem}_lesion.bmp").write_bytes(b"mask")
    (folders / "mel" / f"{sources[1].stem}_lesion.png").write_bytes(b"mask")  # beside its image: not an image
    manifest = load_manifest(folders).set_index("image_id")
    assert sorted(manifest.index) == sorted(s.stem for s in sources[:2])
    assert manifest.loc[sources[0].stem, "mask_path"] == str(folders / "masks" / f"{sources[0].stem}_lesion.bmp")
    assert manifest.loc[sources[1].stem, "mask_path"] == str(folders / "mel" / f"{sources[1].stem}_lesion.png")


def test_an_images_and_masks_folder_without_labels_is_told_the_layouts(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    message = _raises(load_manifest, tmp_path, match_all=(str(tmp_path), "needs its labels", "labels.csv",
                                                          "one folder per class", "_lesion"))
    assert "not class codes" not in message


# ---------------------------------------------------------------- error paths
def _raises(func, *args, match_all: tuple[str, ...]) -> str:
    with pytest.raises(DatasetError) as info:
        func(*args)
    message = str(info.value)
    for part in match_all:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def test_missing_data_dir_and_empty_folder(tmp_path):
    _raises(load_manifest, tmp_path / "nope", match_all=(str(tmp_path / "nope"), "not found"))
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises(load_manifest, empty, match_all=(str(empty), "no dataset found"))
    (empty / "mel").mkdir()
    _raises(read_class_folders, empty, match_all=(str(empty), "no images"))
    (empty / "notaclass").mkdir()
    _raises(read_class_folders, empty, match_all=("notaclass", "not class codes"))


def test_missing_csv_names_the_expected_file(tiny_ham):
    (tiny_ham / "HAM10000_metadata.csv").unlink()
    _raises(read_ham10000, tiny_ham, match_all=("HAM10000_metadata.csv", str(tiny_ham)))


def test_empty_and_headerless_csv(tiny_ham):
    csv = tiny_ham / "HAM10000_metadata.csv"
    csv.write_text("")
    _raises(read_ham10000, tiny_ham, match_all=(str(csv), "empty"))
    csv.write_text("lesion_id,image_id,dx\n")
    _raises(read_ham10000, tiny_ham, match_all=(str(csv), "no rows"))


def test_missing_column_names_file_and_column(tiny_ham):
    csv = tiny_ham / "HAM10000_metadata.csv"
    table = pd.read_csv(csv).drop(columns=["dx"])
    table.to_csv(csv, index=False)
    _raises(read_ham10000, tiny_ham, match_all=(str(csv), "missing column", "dx"))


def test_unknown_label_names_the_row(tiny_ham):
    csv = tiny_ham / "HAM10000_metadata.csv"
    table = pd.read_csv(csv)
    table.loc[5, "dx"] = "melanoma?"
    table.to_csv(csv, index=False)
    message = _raises(read_ham10000, tiny_ham, match_all=(str(csv), "row 7", table.loc[5, "image_id"], "'melanoma?'"))
    assert "unknown label" in message
    table.loc[5, "dx"] = None
    table.to_csv(csv, index=False)
    _raises(read_ham10000, tiny_ham, match_all=(str(csv), "row 7", "empty label"))


def test_missing_image_file_names_row_and_image(tiny_ham):
    csv = tiny_ham / "HAM10000_metadata.csv"
    table = pd.read_csv(csv)
    victim = table.loc[10, "image_id"]
    for path in tiny_ham.glob(f"HAM10000_images_part_*/{victim}.jpg"):
        path.unlink()
    _raises(read_ham10000, tiny_ham, match_all=(str(csv), "row 12", victim, "not found", "1 of 28"))


def test_missing_images_folder(tiny_ham):
    for folder in tiny_ham.glob("HAM10000_images_part_*"):
        for f in folder.iterdir():
            f.unlink()
    _raises(read_ham10000, tiny_ham, match_all=(str(tiny_ham), "no images found"))


def test_duplicate_image_id_and_empty_lesion_id(tiny_ham):
    csv = tiny_ham / "HAM10000_metadata.csv"
    table = pd.read_csv(csv)
    dup = pd.concat([table, table.iloc[[3]]], ignore_index=True)
    dup.to_csv(csv, index=False)
    _raises(read_ham10000, tiny_ham, match_all=(str(csv), table.loc[3, "image_id"], "more than once", "rows 5, 30"))
    table.loc[2, "lesion_id"] = None
    table.to_csv(csv, index=False)
    _raises(read_ham10000, tiny_ham, match_all=(str(csv), "row 4", "empty lesion_id"))


def test_isic_bad_values_name_the_row(tmp_path, tiny_ham_factory):
    ham = tiny_ham_factory(tmp_path / "src", per_class=1, layout="flat")
    root = tmp_path / "isic"
    (root / "images").mkdir(parents=True)
    ids = sorted(p.stem for p in (ham / "images").glob("*.jpg"))[:2]
    for i in ids:
        (root / "images" / f"{i}.jpg").write_bytes((ham / "images" / f"{i}.jpg").read_bytes())
    csv = root / "labels.csv"
    csv.write_text(f"image_id,melanoma,seborrheic_keratosis\n{ids[0]},0,0\n{ids[1]},yes,0\n")
    _raises(read_isic2017, root, match_all=(str(csv), "row 3", ids[1], "melanoma"))
    csv.write_text(f"image_id,label\n{ids[0]},nevus\n{ids[1]},angioma\n")
    _raises(read_isic2017, root, match_all=(str(csv), "row 3", "'angioma'"))
    csv.write_text(f"image_id,label,split\n{ids[0]},nevus,train\n{ids[1]},nevus,holdout\n")
    _raises(read_isic2017, root, match_all=(str(csv), "row 3", "'holdout'"))
    csv.write_text(f"image_id,diagnosis\n{ids[0]},nevus\n")
    _raises(read_isic2017, root, match_all=(str(csv), "label"))


def test_bad_split_files_name_file_and_row(tmp_path, tiny_ham):
    manifest = load_manifest(tiny_ham)
    split_csv = tmp_path / "splits.csv"
    _raises(read_split_file, split_csv, match_all=(str(split_csv), "not found"))
    split_csv.write_text("image_id,split\nISIC_9000000,train\n")
    _raises(apply_split_file, manifest, split_csv, match_all=(str(split_csv), "source"))
    split_csv.write_text("image_id,source,split\nISIC_9000000,ham10000,train\nISIC_9000001,ham10000,holdout\n")
    _raises(apply_split_file, manifest, split_csv, match_all=(str(split_csv), "row 3", "'holdout'"))
    split_csv.write_text("image_id,source,split\nISIC_9000000,ham10000,train\nISIC_9000000,ham10000,test\n")
    _raises(apply_split_file, manifest, split_csv, match_all=(str(split_csv), "row 3", "second time"))
    split_csv.write_text("image_id,source,split\nISIC_0000001,isic2017,train\n")
    _raises(apply_split_file, manifest, split_csv, match_all=(str(split_csv), "match"))


def test_split_helpers_reject_bad_manifests_without_keyerror(ham_manifest):
    with pytest.raises(DatasetError, match="missing column"):
        assign_splits(ham_manifest.drop(columns=["lesion_id"]))
    with pytest.raises(DatasetError, match="missing column"):
        dataset_summary(ham_manifest.drop(columns=["dx"]))
    broken = ham_manifest.head(30).copy()
    broken.loc[broken.index[4], "dx"] = "xyz"
    with pytest.raises(DatasetError, match=r"row 4 .*'xyz'"):
        assign_splits(broken)
    with pytest.raises(DatasetError, match="at least 3 lesions"):
        assign_splits(ham_manifest.head(2))
    with pytest.raises(ValueError):
        load_manifest(".", sources=("imagenet",))
