"""Batched training augmentation: whole batches as tensor ops, per-sample random parameters.

Photometric changes act on raw pixels in [0, 1] (before ImageNet normalisation). Geometry is exact:
- the dihedral group: a transpose of the whole batch (with the per-sample flips below it gives every 90-degree
  rotation) is a pure index permutation, no interpolation;
- one affine warp per sample (random-resized crop with aspect jitter, a small rotation, flips, shift), written in
  pixel-true coordinates, so a rotation does not stretch a non-square image; every spatial tensor passed along
  (lesion masks, the mask channel, localisation maps) goes through the same warp and stays aligned.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.imaging.preprocess import IMAGENET_MEAN

# RGB -> YIQ (NTSC); a hue shift is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_GREY = torch.tensor([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.5, 1.0)    # area share of the random-resized crop (> 1: zoom out, the
                                                     # whole image shrinks inside the frame, the rim reflected)
    crop_ratio: tuple[float, float] = (0.75, 1.333)  # aspect jitter of the crop, relative to the image's aspect
    rotate_degrees: float = 30.0                     # rotation on top of the dihedral group, +-
    transpose_p: float = 0.5                         # whole-batch transpose (dihedral)
    brightness: float = 0.2                          # factors in [1 - x, 1 + x]
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.04                                # hue rotation, +- this share of a full turn
    lowres_p: float = 0.2                            # share of images seen at a lower resolution (area down, up)
    cutout_p: float = 0.0                            # share of images with one rectangle set to the mean colour
    cutout_size: float = 0.3                         # its side, as a share of the image side (at most)
    dermatoscope_p: float = 0.0                      # each dermatoscope artefact's share of images (independently)


def _uniform(b: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(b, generator=generator)


# ---------------------------------------------------------------- geometry
def affine_theta(angle: torch.Tensor, scale_xy: torch.Tensor, shift_xy: torch.Tensor, aspect: float) -> torch.Tensor:
    """(B,2,3) sampling matrices for F.affine_grid (output -> source, normalised coordinates).

    For output point p: source = shift + D^-1 R(angle) D diag(scale_xy) p, with D = diag(aspect, 1) (aspect =
    width / height), i.e. the rotation happens in pixel units. scale_xy < 1 zooms in; a negative entry flips."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx, sy = scale_xy[:, 0], scale_xy[:, 1]
    linear = torch.stack([torch.stack([cos * sx, -sin * sy / aspect], 1),
                          torch.stack([sin * sx * aspect, cos * sy], 1)], 1)
    return torch.cat([linear, shift_xy.unsqueeze(2)], dim=2)


def warp(t: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear", padding: str = "reflection") -> torch.Tensor:
    grid = F.affine_grid(theta.to(t), list(t.shape), align_corners=False)
    return F.grid_sample(t, grid, mode=mode, padding_mode=padding, align_corners=False)


def random_theta(b: int, aspect: float, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    area = _uniform(b, *cfg.crop_scale, generator)
    log_ratio = _uniform(b, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), generator)
    ratio = torch.exp(log_ratio)
    largest = max(1.0, math.sqrt(cfg.crop_scale[1]))  # a zoom-in crop stays inside the image on both axes
    scale = torch.stack([torch.sqrt(area * ratio), torch.sqrt(area / ratio)], 1).clamp(max=largest)
    room = (1 - scale).abs()  # zoom in: the crop stays inside the image; zoom out: the image stays inside the frame
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * room
    flips = torch.where(torch.rand(b, 2, generator=generator) < 0.5, -1.0, 1.0)
    angle = _uniform(b, -cfg.rotate_degrees, cfg.rotate_degrees, generator) * math.pi / 180
    return affine_theta(angle, scale * flips, shift, aspect)


# ---------------------------------------------------------------- photometric (raw pixels in [0, 1])
def colour_jitter(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    view = (b, 1, 1, 1)
    grey_w = _GREY.to(x).view(1, 3, 1, 1)
    x = x * _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, generator).to(x).view(view)
    mean = (x * grey_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (x - mean) * _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, generator).to(x).view(view) + mean
    grey = (x * grey_w).sum(1, keepdim=True)
    x = grey + (x - grey) * _uniform(b, 1 - cfg.saturation, 1 + cfg.saturation, generator).to(x).view(view)
    if cfg.hue > 0:
        angle = _uniform(b, -cfg.hue, cfg.hue, generator) * 2 * math.pi
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotation = torch.zeros(b, 3, 3)
        rotation[:, 0, 0] = 1
        rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
        matrix = (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).to(x)
        x = torch.einsum("bij,bjhw->bihw", matrix, x)
    return x.clamp(0, 1)


def lower_resolution(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """A share p of the images is area-downsampled by a random factor (one per batch) and upsampled back."""
    chosen = torch.rand(x.shape[0], generator=generator) < p
    if not chosen.any():
        return x
    factor = float(_uniform(1, 0.35, 0.8, generator))
    small = F.interpolate(x[chosen], scale_factor=factor, mode="area")
    out = x.clone()
    out[chosen] = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


def cutout(x: torch.Tensor, p: float, size: float, generator: torch.Generator) -> torch.Tensor:
    """One rectangle (sides up to `size` of the image) per chosen image, filled with the ImageNet mean colour."""
    b, _, h, w = x.shape
    chosen = torch.rand(b, generator=generator) < p
    if not chosen.any():
        return x
    hh = (_uniform(b, 0.1, size, generator) * h).long().clamp(min=1)
    ww = (_uniform(b, 0.1, size, generator) * w).long().clamp(min=1)
    top = (torch.rand(b, generator=generator) * (h - hh + 1)).long()
    left = (torch.rand(b, generator=generator) * (w - ww + 1)).long()
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    box = ((rows >= top.view(b, 1, 1)) & (rows < (top + hh).view(b, 1, 1))
           & (cols >= left.view(b, 1, 1)) & (cols < (left + ww).view(b, 1, 1)) & chosen.view(b, 1, 1))
    mean = torch.tensor(IMAGENET_MEAN).to(x).view(1, 3, 1, 1)
    return torch.where(box.unsqueeze(1).to(x.device), mean, x)


# ---------------------------------------------------------------- dermatoscope artefacts (raw pixels in [0, 1])
# What differs between clinics' dermatoscopes and hands (the ISIC 2019-2020 winners' augmentations and the
# domain-generalisation studies on dermoscopy): the dark rim of the field of view, the light's colour temperature,
# focus, the camera's tone curve, hairs over the lesion and surgical-marker ink on the skin. Each artefact acts on a
# share p of the images, independently of the others, so most images keep their own look.
_INK = torch.tensor([[0.35, 0.2, 0.55], [0.15, 0.25, 0.6], [0.1, 0.1, 0.1]])   # violet / blue marker, black pen


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return torch.stack([xs, ys], -1)   # (H,W,2) pixel centres, x first


def vignette(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A darkened rim: a circle (radius 0.7-1.05 of the half-diagonal, soft edge) outside which the image fades to
    near black, as the round field of view of a contact dermatoscope leaves it in the corners."""
    b, _, h, w = x.shape
    centre = torch.tensor([w / 2, h / 2])
    r = ((_grid(h, w) - centre).norm(dim=-1) / centre.norm()).unsqueeze(0)          # corner = 1
    radius = _uniform(b, 0.7, 1.05, generator).view(b, 1, 1)
    soft = _uniform(b, 0.03, 0.2, generator).view(b, 1, 1)
    keep = ((radius - r) / soft).clamp(0, 1)
    dark = _uniform(b, 0.0, 0.15, generator).view(b, 1, 1)
    return x * (keep + (1 - keep) * dark).unsqueeze(1).to(x)


def colour_temperature(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Warmer or cooler light: red and blue gains moved in opposite directions by up to 15 %."""
    t = _uniform(x.shape[0], -0.15, 0.15, generator)
    gains = torch.stack([1 + t, torch.ones_like(t), 1 - t], 1).view(-1, 3, 1, 1).to(x)
    return (x * gains).clamp(0, 1)


def defocus(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A blur of about sigma 0.6-1.5 px (two box-filter passes, one width per call): a lens slightly out of focus."""
    sigma = float(_uniform(1, 0.6, 1.5, generator))
    width = max(3, 2 * round((3 * sigma ** 2 + 1) ** 0.5 / 2) + 1)   # two passes of this width ~ Gaussian(sigma)
    for _ in range(2):
        x = F.avg_pool2d(x, (1, width), 1, (0, width // 2), count_include_pad=False)
        x = F.avg_pool2d(x, (width, 1), 1, (width // 2, 0), count_include_pad=False)
    return x


def gamma(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Another camera tone curve: x ** g, g in [0.7, 1.4]."""
    g = torch.exp(_uniform(x.shape[0], math.log(0.7), math.log(1.4), generator)).view(-1, 1, 1, 1).to(x)
    return x.clamp(min=1e-4) ** g


def strokes(x: torch.Tensor, generator: torch.Generator, count: tuple[int, int], width: tuple[float, float],
            colours: torch.Tensor, opacity: tuple[float, float]) -> torch.Tensor:
    """Straight strokes painted over each image: `count` of them, each `width` px wide (anti-aliased), in one of
    `colours` (darkened or lightened up to 30 %) at `opacity`. Hairs are many thin dark ones, ink marks a few
    broad coloured ones."""
    b, _, h, w = x.shape
    grid = _grid(h, w).view(1, -1, 2)
    out = x.clone()
    for i in range(b):  # per image: its own number of strokes
        n = int(torch.randint(count[0], count[1] + 1, (1,), generator=generator))
        start = torch.rand(n, 2, generator=generator) * torch.tensor([w, h])
        angle = torch.rand(n, generator=generator) * math.pi
        length = _uniform(n, 0.2, 0.9, generator) * max(h, w)
        end = start + length.unsqueeze(1) * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
        seg = (end - start).unsqueeze(1)                                         # (n,1,2)
        along = (((grid - start.unsqueeze(1)) * seg).sum(-1) / (seg ** 2).sum(-1)).clamp(0, 1)
        distance = (grid - (start.unsqueeze(1) + along.unsqueeze(-1) * seg)).norm(dim=-1)   # (n,HW)
        half = _uniform(n, *width, generator).unsqueeze(1) / 2
        cover = ((half + 0.5 - distance).clamp(0, 1) * _uniform(n, *opacity, generator).unsqueeze(1))
        colour = colours[torch.randint(len(colours), (n,), generator=generator)] \
            * _uniform(n, 0.7, 1.3, generator).unsqueeze(1)                     # (n,3)
        covered = 1 - torch.prod(1 - cover, 0)                                  # (HW,) where any stroke lies
        paint = colour.clamp(0, 1).T @ cover / cover.sum(0).clamp(min=1e-6)      # (3,HW) where strokes cross
        out[i] = (out[i].reshape(3, -1) * (1 - covered) + paint.to(x) * covered).view(3, h, w)
    return out


def hairs(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return strokes(x, generator, (3, 12), (0.6, 1.6), torch.tensor([[0.12, 0.08, 0.05], [0.05, 0.05, 0.05]]),
                   (0.7, 1.0))


def ink_marks(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return strokes(x, generator, (1, 2), (2.0, 5.0), _INK, (0.5, 0.9))


DERMATOSCOPE_ARTEFACTS = (vignette, colour_temperature, defocus, gamma, hairs, ink_marks)


def dermatoscope_artefacts(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Each artefact of DERMATOSCOPE_ARTEFACTS on an independent share p of the batch (raw pixels in [0, 1])."""
    if p <= 0:
        return x
    x = x.clone()
    for artefact in DERMATOSCOPE_ARTEFACTS:
        chosen = torch.rand(x.shape[0], generator=generator) < p
        if chosen.any():
            x[chosen] = artefact(x[chosen], generator).clamp(0, 1)
    return x


# ---------------------------------------------------------------- CutMix (classifiers)
def cutmix(tensors: list[torch.Tensor], p: float, generator: torch.Generator
           ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019): a share p of the images gets a box pasted from another image of the batch, the same
    box in every tensor passed (the image and mask-CN's mask channel, all (B,C,H,W) of one size). The box's area
    share is uniform (the paper's Beta(1, 1)), its centre uniform, its sides clipped at the border.

    Returns the tensors, each image's partner (the index its box came from) and the share of its own pixels it
    keeps (1 where it got no box): the loss mixes the two labels by that share (core.models.losses.mixed_cross_entropy)."""
    b, _, h, w = tensors[0].shape
    partner = torch.randperm(b, generator=generator)
    chosen = torch.rand(b, generator=generator) < p
    side = torch.sqrt(torch.rand(b, generator=generator))  # box side share: its area share is uniform
    centre_y = torch.rand(b, generator=generator) * h
    centre_x = torch.rand(b, generator=generator) * w
    rows = torch.arange(h).view(1, h, 1) + 0.5
    cols = torch.arange(w).view(1, 1, w) + 0.5
    box = ((rows - centre_y.view(b, 1, 1)).abs() < (side * h / 2).view(b, 1, 1)) \
        & ((cols - centre_x.view(b, 1, 1)).abs() < (side * w / 2).view(b, 1, 1)) & chosen.view(b, 1, 1)
    keep = 1 - box.flatten(1).float().mean(1)
    box = box.unsqueeze(1)
    mixed = [torch.where(box.to(t.device), t[partner], t) for t in tensors]
    return mixed, partner, keep


# ---------------------------------------------------------------- the mask channel of mask-CN
def perturb_masks(masks: torch.Tensor, generator: torch.Generator, drop_p: float = 0.1) -> torch.Tensor:
    """Ground-truth lesion masks (B,1,H,W) in {0,1} -> soft masks with the errors a coarse segmenter makes.

    Per image one of: eroded, dilated or unchanged (kernel 3-11 px, one per batch); then a Gaussian blur
    (sigma 0.5-2 px as two box-filter passes; soft edges like a sigmoid output); a share drop_p becomes empty (segmenter found nothing)."""
    b = masks.shape[0]
    k = 2 * int(torch.randint(1, 6, (1,), generator=generator)) + 1
    choice = torch.randint(0, 3, (b,), generator=generator)
    out = masks.clone()
    for value, sign in ((0, -1.0), (1, 1.0)):  # 0: erode (max-pool of the complement), 1: dilate
        chosen = choice == value
        if chosen.any():
            m = masks[chosen] * sign  # a k x k square structuring element, as two separable 1-D max-pools
            m = F.max_pool2d(F.max_pool2d(m, (1, k), 1, (0, k // 2)), (k, 1), 1, (k // 2, 0))
            out[chosen] = m * sign
    sigma = float(_uniform(1, 0.5, 2.0, generator))
    width = max(3, 2 * round((6 * sigma ** 2 + 1) ** 0.5 / 2) + 1)  # two box passes of this width ~ Gaussian(sigma)
    for _ in range(2):
        out = F.avg_pool2d(out, (1, width), 1, (0, width // 2), count_include_pad=False)
        out = F.avg_pool2d(out, (width, 1), 1, (width // 2, 0), count_include_pad=False)
    keep = (torch.rand(b, generator=generator) >= drop_p).view(b, 1, 1, 1).to(masks)
    return out * keep


# ---------------------------------------------------------------- the whole batch
def augment_batch(images: torch.Tensor, spatial: list[torch.Tensor | None], cfg: AugmentConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """images (B,3,H,W) raw in [0,1] and spatial tensors (B,C,h,w) covering the same field of view ->
    augmented images (raw, [0,1]) and the spatial tensors warped identically (bilinear; threshold masks after)."""
    images = colour_jitter(images, cfg, generator)
    images = dermatoscope_artefacts(images, cfg.dermatoscope_p, generator)
    images = lower_resolution(images, cfg.lowres_p, generator)
    if float(torch.rand(1, generator=generator)) < cfg.transpose_p:
        images = images.transpose(-1, -2)
        spatial = [None if t is None else t.transpose(-1, -2) for t in spatial]
    aspect = images.shape[-1] / images.shape[-2]
    theta = random_theta(images.shape[0], aspect, cfg, generator)
    images = warp(images, theta)
    spatial = [None if t is None else warp(t, theta) for t in spatial]
    if cfg.cutout_p > 0:
        images = cutout(images, cfg.cutout_p, cfg.cutout_size, generator)
    return images, spatial
