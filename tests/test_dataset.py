"""core.dataset: items, paired image/mask transforms, preprocessing flags and the balanced sampler."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from core.classes import CLASS_CODES, CLASS_INDEX
from core.data import DatasetError
from core.dataset import LesionDataset, build_transforms, make_balanced_sampler, read_mask, read_rgb
from core.preprocess import IMAGENET_MEAN, IMAGENET_STD, remove_hair, shades_of_gray

MEAN = torch.tensor(IMAGENET_MEAN)[:, None, None]
STD = torch.tensor(IMAGENET_STD)[:, None, None]


def _denorm_gray(image: torch.Tensor) -> np.ndarray:
    """Normalised 3xHxW float -> HxW grey levels 0..255."""
    return ((image * STD + MEAN).clamp(0, 1).mean(0) * 255).numpy()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def _otsu_dark(gray: np.ndarray, valid: np.ndarray) -> np.ndarray:
    t, _ = cv2.threshold(gray[valid].astype(np.uint8).reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return (gray < t) & valid


@pytest.fixture(scope="module")
def sample(ham_manifest):
    """Five images per class (35 real rows)."""
    return ham_manifest.groupby("dx", sort=True).head(5).reset_index(drop=True)


@pytest.fixture
def asymmetric_files(tmp_path):
    """A synthetic image whose bright L-shape is exactly its mask, written as real files."""
    rgb = np.zeros((60, 80, 3), np.uint8)
    mask = np.zeros((60, 80), np.uint8)
    for target, value in ((rgb, (230, 230, 230)), (mask, 255)):
        target[5:40, 6:16] = value    # vertical bar at the left
        target[30:40, 6:50] = value   # foot to the right
    img_path, mask_path = tmp_path / "ISIC_L.png", tmp_path / "ISIC_L_segmentation.png"
    cv2.imwrite(str(img_path), rgb[:, :, ::-1])
    cv2.imwrite(str(mask_path), mask)
    row = {"image_id": "ISIC_L", "image_path": str(img_path), "mask_path": str(mask_path), "dx": "mel"}
    import pandas as pd

    return pd.DataFrame([row]), rgb, mask > 0


def test_items_have_the_documented_shapes_and_types(sample):
    ds = LesionDataset(sample, build_transforms(train=True, size=(96, 128)))
    assert len(ds) == len(sample)
    for index in (0, len(ds) - 1):
        item = ds[index]
        assert set(item) == {"image", "mask", "label", "image_id"}
        assert item["image"].shape == (3, 96, 128) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, 96, 128) and item["mask"].dtype == torch.float32
        assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
        assert item["label"] == CLASS_INDEX[sample["dx"].iloc[index]]
        assert item["image_id"] == sample["image_id"].iloc[index]
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 3, 96, 128) and batch["mask"].shape == (4, 1, 96, 128)
    assert batch["label"].dtype == torch.int64


def test_eval_transform_normalises_and_keeps_mask_binary(sample):
    ds = LesionDataset(sample.iloc[:6], build_transforms(train=False, size=(120, 160)))
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    assert images.shape == (6, 3, 120, 160)
    # ImageNet normalisation: roughly zero-centred, unit-scale values
    assert -1.5 < images.mean().item() < 1.5 and images.std().item() < 2.5
    raw = read_rgb(sample["image_path"].iloc[0])
    expected = torch.from_numpy(cv2.resize(raw, (160, 120), interpolation=cv2.INTER_AREA)).permute(2, 0, 1) / 255.0
    assert torch.allclose(images[0] * STD + MEAN, expected, atol=0.08)
    mask = ds[0]["mask"]
    assert set(torch.unique(mask).tolist()) == {0.0, 1.0}
    native = read_mask(sample["mask_path"].iloc[0])
    assert abs(mask.mean().item() - native.mean()) < 0.02


def test_forced_flip_moves_mask_with_image(asymmetric_files):
    table, rgb, mask = asymmetric_files
    flip = v2.Compose([v2.RandomHorizontalFlip(p=1.0), *build_transforms(train=False, size=None).transforms])
    item = LesionDataset(table, flip)[0]
    got_mask = item["mask"][0].numpy().astype(bool)
    assert np.array_equal(got_mask, mask[:, ::-1])
    assert not np.array_equal(got_mask, mask)
    bright = _denorm_gray(item["image"]) > 128
    assert np.array_equal(bright, mask[:, ::-1])


def test_random_train_transforms_keep_image_and_mask_aligned(asymmetric_files):
    table, _, _ = asymmetric_files
    ds = LesionDataset(table, build_transforms(train=True, size=(96, 128)))
    torch.manual_seed(0)
    seen_masks = set()
    for _ in range(12):
        item = ds[0]
        mask = item["mask"][0].numpy().astype(bool)
        bright = _denorm_gray(item["image"]) > 100
        assert mask.sum() > 100
        # only interpolated edge pixels may disagree; a mask left behind by a flip/rotation scores far lower
        assert _dice(mask, bright) > 0.9, _dice(mask, bright)
        assert _dice(mask, bright) > _dice(mask[::-1, ::-1], bright) + 0.2
        seen_masks.add(mask.tobytes())
    assert len(seen_masks) > 10  # the transforms really are random


def test_real_masks_stay_on_the_dark_lesion_through_train_transforms(sample):
    transform = build_transforms(train=True, size=(96, 128))
    torch.manual_seed(1)
    checked = 0
    for path, mask_path in zip(sample["image_path"], sample["mask_path"]):
        rgb = read_rgb(path)
        mask = read_mask(mask_path, rgb.shape[:2]).astype(bool)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(float)
        full = np.ones_like(mask)
        dice0 = _dice(mask, _otsu_dark(gray, full))
        if dice0 < 0.75 or gray[~mask].mean() - gray[mask].mean() < 25:
            continue  # only lesions that are clearly the dark region of their image
        for _ in range(2):
            image_t, mask_t, valid_t = transform(
                tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1)),
                tv_tensors.Mask(torch.from_numpy(mask.astype(np.uint8))[None]),
                tv_tensors.Mask(torch.ones(1, *mask.shape, dtype=torch.uint8)),  # where real pixels landed
            )
            g = _denorm_gray(image_t)
            m = mask_t[0].numpy().astype(bool)
            valid = valid_t[0].numpy().astype(bool)
            if (m & valid).sum() < 100 or (~m & valid).sum() < 100:
                continue
            assert g[~m & valid].mean() - g[m & valid].mean() > 10
            assert _dice(m, _otsu_dark(g, valid)) > dice0 - 0.15
            checked += 1
    assert checked >= 12


def test_without_masks_and_missing_masks(sample):
    ds = LesionDataset(sample.iloc[:3], build_transforms(train=False, size=(64, 64)), with_mask=False)
    item = ds[1]
    assert "mask" not in item and item["image"].shape == (3, 64, 64)
    no_mask = sample.iloc[:3].copy()
    no_mask.loc[no_mask.index[1], "mask_path"] = ""
    with pytest.raises(DatasetError, match=no_mask["image_id"].iloc[1]):
        LesionDataset(no_mask)
    LesionDataset(no_mask, with_mask=False)  # fine without masks


def test_bad_rows_raise_dataset_errors(sample, tmp_path):
    bad = sample.iloc[:2].copy()
    bad.loc[bad.index[0], "dx"] = "xyz"
    with pytest.raises(DatasetError, match="'xyz'"):
        LesionDataset(bad)
    gone = sample.iloc[:2].copy()
    missing = tmp_path / "ISIC_gone.jpg"
    gone.loc[gone.index[1], "image_path"] = str(missing)
    ds = LesionDataset(gone)
    with pytest.raises(DatasetError, match="ISIC_gone.jpg"):
        ds[1]
    with pytest.raises(DatasetError, match="missing column"):
        LesionDataset(sample.drop(columns=["mask_path"]))


def test_preprocessing_flags_apply_before_the_transform(sample):
    rows = sample.iloc[:2]
    plain = LesionDataset(rows, with_mask=False)
    cc = LesionDataset(rows, with_mask=False, colour_constancy=True)
    both = LesionDataset(rows, with_mask=False, colour_constancy=True, hair_removal=True)
    raw = read_rgb(rows["image_path"].iloc[0])
    assert np.array_equal(plain.load_rgb(0), raw)
    assert np.array_equal(cc.load_rgb(0), shades_of_gray(raw))
    assert np.array_equal(both.load_rgb(0), shades_of_gray(remove_hair(raw)))
    expected = torch.from_numpy(shades_of_gray(raw)).permute(2, 0, 1) / 255.0
    assert torch.allclose(cc[0]["image"] * STD + MEAN, expected, atol=1e-5)
    spread = lambda x: np.ptp((x * STD + MEAN).mean(dim=(1, 2)).numpy())  # noqa: E731
    assert spread(cc[0]["image"]) < 0.5 * spread(plain[0]["image"])


def test_balanced_sampler_evens_out_the_classes(ham_manifest):
    labels = [CLASS_INDEX[c] for c in ham_manifest["dx"]]
    natural = np.bincount(labels, minlength=len(CLASS_CODES)) / len(labels)
    assert natural.max() > 0.6  # nv dominates HAM10000
    sampler = make_balanced_sampler(labels, num_samples=14_000, generator=torch.Generator().manual_seed(0))
    assert len(sampler) == 14_000
    drawn = np.array(labels)[np.fromiter(iter(sampler), dtype=np.int64)]
    share = np.bincount(drawn, minlength=len(CLASS_CODES)) / len(drawn)
    assert np.all(np.abs(share - 1 / len(CLASS_CODES)) < 0.02), share
    assert len(make_balanced_sampler(torch.tensor([0, 0, 1]))) == 3
    with pytest.raises(ValueError):
        make_balanced_sampler([])
