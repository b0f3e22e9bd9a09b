"""The views of an image the dermoscopy check (calibration.fit_dermoscopy_check) is fitted and measured on.

- whole: the image as it arrives;
- top / right / random<k>: watermark-free parts of a DermNet photo (its logo and text sit in the lower-left corner),
  or for an unwatermarked photo a seeded random crop of 40-90 % of each side anywhere;
- zoom<k>: a seeded random crop of 20-45 % of each side (watermark-free for DermNet): a camera close-up in which a
  lesion fills the frame as it does under a dermatoscope, the framing the clinical photos that pass the check share;
- artefacts<k>: a dermoscopy image with what other dermatoscopes and clinics add to it, so that none of those marks
  reads as "camera photo": a circular dark-corner vignette of a random radius (or a zoomed crop without any), marker
  ink strokes and dots, a colour-calibration sticker (a coloured disc at the edge, as in ISIC archive images), a
  ruler along one edge, and a colour cast. No ink circle round the lesion: that is how PAD-UFES-20's camera photos
  are marked, and taught as dermoscopy it let them through. Every random choice is seeded by the sample key, so a
  view is the same on every run.
"""
from __future__ import annotations

import hashlib

import cv2
import numpy as np

TOP_SHARE = 0.72               # the top 72 % of a DermNet photo holds no watermark (lower-left logo / text)
RIGHT_SHARE = 0.55             # nor does its right 55 %
INK_COLOURS = ((40, 60, 170), (70, 40, 120), (20, 20, 30), (30, 110, 60))  # blue, violet, black, green marker (RGB)


def rng_of(key: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:12], 16))


def crop_view(rgb: np.ndarray, view: str, key: str, watermarked: bool) -> np.ndarray:
    """The named view of an image (see the module docstring)."""
    h, w = rgb.shape[:2]
    if view == "whole":
        return rgb
    if view == "top":
        return rgb[: int(h * TOP_SHARE)]
    if view == "right":
        return rgb[:, w - int(w * RIGHT_SHARE):]
    if view.startswith("artefacts"):
        return with_artefacts(rgb, rng_of(key))
    if not view.startswith(("random", "zoom")):
        raise ValueError(f"unknown view {view!r}")
    rng = rng_of(key)
    low, high = (0.4, 0.9) if view.startswith("random") else (0.2, 0.45)
    ch, cw = int(h * rng.uniform(low, high)), int(w * rng.uniform(low, high))
    top_limit = int(h * TOP_SHARE) if watermarked else h
    y = int(rng.integers(0, max(1, top_limit - ch + 1))) if ch <= top_limit else 0
    x = int(rng.integers(0, w - cw + 1))
    return rgb[y:y + min(ch, top_limit), x:x + cw]


def with_artefacts(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dermoscopy image with a random mix of vignette or zoom, marker ink, sticker, ruler and colour cast (at least
    one)."""
    out = rgb.copy()
    chosen = rng.random(5) < (0.6, 0.35, 0.25, 0.35, 0.4)
    if not chosen.any():
        chosen[rng.integers(5)] = True
    vignette, ink, sticker, ruler, cast = chosen
    if vignette:
        out = dark_corners(out, rng) if rng.random() < 0.6 else zoomed(out, rng)
    if ink:
        out = marker_ink(out, rng)
    if sticker:
        out = sticker_disc(out, rng)
    if ruler:
        out = ruler_strip(out, rng)
    if cast:
        gains = rng.uniform(0.8, 1.2, 3)
        out = np.clip(out.astype(np.float32) * gains, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def dark_corners(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The circular field of view of a contact dermatoscope: outside a disc (radius 0.5-0.75 of the diagonal / 2,
    soft edge) near black."""
    h, w = rgb.shape[:2]
    radius = rng.uniform(0.5, 0.75) * np.hypot(h, w) / 2
    cy, cx = h / 2 + rng.normal(0, 0.03 * h), w / 2 + rng.normal(0, 0.03 * w)
    yy, xx = np.mgrid[:h, :w]
    distance = np.hypot(yy - cy, xx - cx)
    edge = max(2.0, 0.03 * radius)
    lit = np.clip((radius - distance) / edge, 0, 1)[..., None]
    floor = rng.uniform(0, 25)
    return (rgb * lit + floor * (1 - lit)).astype(np.uint8)


def zoomed(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A central 55-85 % crop: a lens with a narrower field, no dark corners."""
    h, w = rgb.shape[:2]
    share = rng.uniform(0.55, 0.85)
    ch, cw = int(h * share), int(w * share)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return rgb[y:y + ch, x:x + cw]


def marker_ink(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A few marker strokes and dots (a short line or tick beside the lesion, as clinics mark it), in a marker colour."""
    out = np.ascontiguousarray(rgb.copy())
    h, w = out.shape[:2]
    colour = tuple(int(c) for c in INK_COLOURS[rng.integers(len(INK_COLOURS))])
    thickness = max(1, int(rng.uniform(0.008, 0.025) * min(h, w)))
    for _ in range(int(rng.integers(1, 3))):
        start = rng.uniform((0, 0), (w, h))
        end = start + rng.normal(0, 0.15, 2) * (w, h)
        cv2.line(out, tuple(int(v) for v in start), tuple(int(v) for v in end), colour, thickness, cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 3))):
        cv2.circle(out, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), thickness * 2, colour, -1, cv2.LINE_AA)
    return out


def sticker_disc(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A flat-coloured disc (a colour-calibration or size sticker) cut by one edge of the picture."""
    out = np.ascontiguousarray(rgb.copy())
    h, w = out.shape[:2]
    radius = int(rng.uniform(0.15, 0.3) * min(h, w))
    edge = int(rng.integers(4))
    along = rng.uniform(0.2, 0.8)
    centre = [(int(along * w), 0), (int(along * w), h), (0, int(along * h)), (w, int(along * h))][edge]
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    cv2.circle(out, centre, radius, colour, -1, cv2.LINE_AA)
    if rng.random() < 0.5:
        cv2.circle(out, centre, int(radius * 0.6), (235, 235, 235), -1, cv2.LINE_AA)
    return out


def ruler_strip(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A light ruler with dark millimetre ticks along one edge (as dermatoscopes' scale overlays and paper rulers)."""
    out = np.ascontiguousarray(rgb.copy())
    h, w = out.shape[:2]
    band = max(4, int(rng.uniform(0.06, 0.12) * min(h, w)))
    light = int(rng.uniform(200, 250))
    edge = int(rng.integers(4))
    length = w if edge < 2 else h
    strip = np.full((band, length, 3), light, dtype=np.uint8)
    step = max(3, int(length / rng.uniform(25, 60)))
    for i, x in enumerate(range(0, length, step)):
        tick = band if i % 10 == 0 else (band * 2 // 3 if i % 5 == 0 else band // 3)
        strip[:tick, x:x + 1] = 20
    if edge == 0:
        out[:band] = strip
    elif edge == 1:
        out[h - band:] = strip[::-1]
    elif edge == 2:
        out[:, :band] = strip.transpose(1, 0, 2)
    else:
        out[:, w - band:] = strip.transpose(1, 0, 2)[:, ::-1]
    return out
