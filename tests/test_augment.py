"""Batched augmentation (train/augment.py) and the schedules (train/schedule.py) on real images."""
import math

import numpy as np
import pytest
import torch

from core.imaging.preprocess import Preprocessing
from train.augment import (DERMATOSCOPE_ARTEFACTS, AugmentConfig, affine_theta, augment_batch, colour_jitter, cutmix,
                           dermatoscope_artefacts, hairs, ink_marks, perturb_masks, random_theta, vignette, warp)
from train.cache import load_arrays
from train.schedule import EMA, learning_rate
from train.stages import STAGES
from train.train import parse_args


@pytest.fixture(scope="module")
def real_batch(ham_manifest):
    rows = ham_manifest.groupby("dx").head(1).reset_index(drop=True)
    images, masks = load_arrays(rows, (150, 200), Preprocessing(), with_masks=True, use_cache=False)
    return (torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255,
            torch.from_numpy(np.ascontiguousarray(masks)).unsqueeze(1).float())


def _rotation(b: int, degrees: float, aspect: float) -> torch.Tensor:
    return affine_theta(torch.full((b,), math.radians(degrees)), torch.ones(b, 2), torch.zeros(b, 2), aspect)


def test_rotation_by_90_and_back_is_exact_on_a_non_square_image(real_batch):
    """The rotation is done in pixel units: a 150x200 image rotated by 90 degrees and back equals the original
    wherever both rotations stayed inside the image (the central 150x150 square), with no stretching."""
    x, _ = real_batch
    aspect = 200 / 150
    there_and_back = warp(warp(x, _rotation(len(x), 90, aspect)), _rotation(len(x), -90, aspect))
    inside = warp(warp(torch.ones_like(x[:, :1]), _rotation(len(x), 90, aspect), padding="zeros"),
                  _rotation(len(x), -90, aspect), padding="zeros") > 0.999
    assert inside.float().mean() > 0.7  # 150/200 of the columns
    assert torch.allclose(there_and_back[inside.expand_as(x)], x[inside.expand_as(x)], atol=1e-4)
    # a single 90-degree turn maps the image onto its transposed content (pixel-exact, no interpolation blur)
    turned = warp(x, _rotation(len(x), 90, aspect))
    reference = torch.rot90(x, k=1, dims=(2, 3))  # (B,3,200,150): the exact rotation, another shape
    centre = turned[..., :, 25:175]  # the 150x150 centre of the rotated 150x200 frame
    ref_centre = reference[..., 25:175, :]
    assert torch.allclose(centre, ref_centre, atol=1e-4)  # float32 grid coordinates: ~3e-5


def test_a_flip_in_the_affine_is_exact(real_batch):
    x, _ = real_batch
    theta = affine_theta(torch.zeros(len(x)), torch.tensor([[-1.0, 1.0]]).repeat(len(x), 1), torch.zeros(len(x), 2), 4 / 3)
    assert torch.allclose(warp(x, theta), torch.flip(x, dims=(3,)), atol=1e-6)


def test_a_mask_moves_with_its_image(real_batch):
    """Full augmentation with photometric changes off: the warped image's lesion (painted from the mask) lies
    exactly where the warped mask is, for every image in the batch (including the whole-batch transposes)."""
    _, masks = real_batch
    painted = masks.repeat(1, 3, 1, 1)
    cfg = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, lowres_p=0, transpose_p=0.5)
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        images, (warped,) = augment_batch(painted, [masks], cfg, generator)
        assert torch.allclose(images[:, :1], warped, atol=1e-5)
        assert images.shape[-2:] in ((150, 200), (200, 150))
    # and the warp is not the identity
    assert not torch.allclose(warped, masks if warped.shape == masks.shape else masks.transpose(-1, -2))


def test_photometric_jitter_acts_on_raw_pixels(real_batch):
    x, _ = real_batch
    brighter = colour_jitter(x, AugmentConfig(brightness=0.5, contrast=0, saturation=0, hue=0), torch.Generator().manual_seed(0))
    ratio = (brighter / x.clamp(min=1e-3))[(x > 0.05) & (brighter < 0.99)]
    per_image = [(brighter[i] / x[i].clamp(min=1e-3))[(x[i] > 0.05) & (brighter[i] < 0.99)] for i in range(len(x))]
    assert all(r.std() < 1e-4 for r in per_image)  # one brightness factor per image, applied to raw values
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 1.5 + 1e-4 and ratio.max() - ratio.min() > 0.1
    hued = colour_jitter(x, AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0.1), torch.Generator().manual_seed(0))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    unclipped = (hued > 0.001) & (hued < 0.999)
    assert unclipped.float().mean() > 0.9
    assert torch.allclose((hued * luma).sum(1)[unclipped.all(1)], (x * luma).sum(1)[unclipped.all(1)], atol=2e-3)  # hue keeps luma
    assert (hued - x).abs().mean() > 0.005


def test_dermatoscope_artefacts_change_images_as_named_and_off_means_untouched(real_batch):
    images, _ = real_batch
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert dermatoscope_artefacts(images, 0.0, generator) is images
    assert torch.equal(generator.get_state(), state)  # off draws nothing: older runs resume exactly
    for artefact in DERMATOSCOPE_ARTEFACTS:
        out = artefact(images.clone(), torch.Generator().manual_seed(1)).clamp(0, 1)
        assert out.shape == images.shape and not torch.allclose(out, images, atol=1e-3), artefact.__name__
    dark = vignette(images, torch.Generator().manual_seed(2))
    corners, centre = dark[:, :, :5, :5], dark[:, :, 70:80, 95:105]
    assert (corners <= images[:, :, :5, :5] + 1e-6).all() and corners.mean() < 0.5 * images[:, :, :5, :5].mean()
    assert torch.allclose(centre, images[:, :, 70:80, 95:105])   # the lesion in the middle is left alone
    for strokes, darker in ((hairs, True), (ink_marks, False)):
        out = strokes(images, torch.Generator().manual_seed(3))
        changed = (out - images).abs().amax(1) > 0.05
        assert 0.0005 < changed.float().mean() < 0.35, strokes.__name__   # thin lines, not a wash over the image
        if darker:
            assert (out.mean(1)[changed] < images.mean(1)[changed]).float().mean() > 0.9
    mixed = dermatoscope_artefacts(images.repeat(8, 1, 1, 1), 0.3, torch.Generator().manual_seed(4))
    untouched = (mixed == images.repeat(8, 1, 1, 1)).flatten(1).all(1)
    assert 0 < untouched.sum() < len(untouched) and mixed.min() >= 0 and mixed.max() <= 1


def test_cutmix_pastes_one_box_from_the_partner_into_the_image_and_its_mask_and_reports_the_kept_share(real_batch):
    """CutMix: the changed pixels form one rectangle taken from the partner image, the mask channel changes only
    inside it and takes the partner's mask there, and the kept share (by which the labels mix) is the share of
    pixels outside it; p = 0 changes nothing."""
    x, m = real_batch
    (mixed_x, mixed_m), partner, keep = cutmix([x, m], 1.0, torch.Generator().manual_seed(0))
    checked = 0
    for i in range(len(x)):
        changed = (mixed_x[i] != x[i]).any(0)
        if partner[i] == i or not changed.any():
            continue
        rows, cols = changed.nonzero(as_tuple=True)
        box = torch.zeros_like(changed)
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        assert changed[box].float().mean() > 0.95                       # one rectangle
        assert torch.equal(mixed_x[i][:, box], x[partner[i]][:, box])   # the partner's pixels
        assert torch.equal(mixed_m[i, 0][box], m[partner[i], 0][box])   # the same box in the mask
        assert torch.equal(mixed_m[i, 0][~box], m[i, 0][~box])
        assert abs(float(keep[i]) - (1 - box.float().mean().item())) < 1e-6
        checked += 1
    assert checked >= 3
    (same_x, same_m), _, keep0 = cutmix([x, m], 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(same_x, x) and torch.equal(same_m, m) and torch.equal(keep0, torch.ones(len(x)))


def test_perturbed_masks_stay_near_the_truth(real_batch):
    _, masks = real_batch
    out = perturb_masks(masks, torch.Generator().manual_seed(1), drop_p=0.0)
    assert out.min() >= 0 and out.max() <= 1
    soft = ((out > 0.02) & (out < 0.98)).float().mean()
    assert soft > 0.005  # blurred edges, like a sigmoid output
    iou = ((out > 0.5) & (masks > 0.5)).flatten(1).sum(1) / ((out > 0.5) | (masks > 0.5)).flatten(1).sum(1)
    assert (iou > 0.5).all() and (iou < 1).any()
    dropped = perturb_masks(masks, torch.Generator().manual_seed(1), drop_p=1.0)
    assert dropped.abs().max() == 0


def test_random_resized_crops_zoom_in_within_the_range():
    theta = random_theta(2000, 4 / 3, AugmentConfig(rotate_degrees=0), torch.Generator().manual_seed(0))
    area = (theta[:, 0, 0] * theta[:, 1, 1]).abs()
    assert area.min() >= 0.5 * 0.75 - 1e-6 and area.max() <= 1 + 1e-6  # crop area share (ratio clamping shrinks it)
    assert (theta[:, :, 2].abs() <= 1 - theta[:, [0, 1], [0, 1]].abs() + 1e-6).all()  # crops stay inside the image


def test_zoom_out_shrinks_the_lesion_and_keeps_the_whole_image_in_the_frame():
    cfg = AugmentConfig(crop_scale=(2.0, 2.0), crop_ratio=(1.0, 1.0), rotate_degrees=0)
    theta = random_theta(500, 4 / 3, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(theta[:, [0, 1], [0, 1]].abs(), torch.full((500, 2), 2 ** 0.5))
    assert (theta[:, :, 2].abs() <= theta[:, [0, 1], [0, 1]].abs() - 1 + 1e-6).all()  # no part of the image cut off
    mask = torch.zeros(8, 1, 96, 128)
    mask[:, :, 32:64, 40:88] = 1  # a lesion in the middle, 1/8 of the image
    warped = warp(mask, theta[:8], padding="zeros")
    assert warped.sum((1, 2, 3)).div(mask.sum((1, 2, 3))).sub(0.5).abs().max() < 0.02  # half its area in the frame
    assert STAGES["coarse_sn"](parse_args(["--stage", "coarse_sn", "--crop-scale-max", "2"])).augment.crop_scale == (0.5, 2.0)


def test_warmup_then_cosine_and_poly():
    total, warmup, base = 100, 10, 1e-3
    lrs = [learning_rate(s, total, base, warmup, "cosine", min_ratio=0.01) for s in range(total)]
    assert lrs[0] == pytest.approx(base / warmup) and lrs[warmup - 1] == pytest.approx(base)
    assert all(a < b for a, b in zip(lrs[:warmup - 1], lrs[1:warmup]))
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))
    assert learning_rate(total, total, base, warmup, "cosine", min_ratio=0.01) == pytest.approx(0.01 * base)
    assert learning_rate(55, total, base, warmup, "cosine", min_ratio=0.0) == pytest.approx(base / 2)
    assert learning_rate(55, total, base, warmup, "poly", poly_power=1.0) == pytest.approx(base / 2)
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate(1, total, base, 0, "step")


def test_ema_averages_parameters_and_copies_buffers():
    model = torch.nn.BatchNorm1d(3)
    ema = EMA(model, decay=0.5)
    ema.updates = 100  # past the ramp-up: the decay is 0.5
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.running_mean.fill_(7.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((3,), 2.0))  # 0.5 * 1 + 0.5 * 3
    assert torch.equal(ema.module.running_mean, model.running_mean)
    restored = EMA(model, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 101 and torch.equal(restored.module.weight, ema.module.weight)
