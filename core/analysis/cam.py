"""Class activation maps from the maps the classifier's forward pass already has, and image overlays.

For mask-CN (global average pool -> linear head) Grad-CAM, HiResCAM and XGrad-CAM are its class activation map
(cam_from_class_maps): no second forward or backward pass, and no pytorch-grad-cam import. The other methods
(Grad-CAM++, Score-CAM, EigenCAM, ...) live in core.analysis.gradient_cam, imported when one is asked for.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from core.imaging.preprocess import as_rgb_u8

__all__ = ["CAM_METHOD_NAMES", "CLASS_AGNOSTIC_CAMS", "LINEAR_HEAD_CAMS", "LINEAR_HEAD_NEAR_DUPLICATES",
           "cam_from_class_maps", "distinct_class_cams", "overlay_heatmap", "overlay_mask", "to_unit_range"]

#: The CAM methods offered (core.analysis.gradient_cam.CAM_METHODS maps each to its pytorch-grad-cam class).
CAM_METHOD_NAMES = ("Grad-CAM", "Grad-CAM++", "HiResCAM", "XGrad-CAM", "LayerCAM", "Score-CAM", "EigenCAM")
#: CAM methods that, for a classifier whose head is global average pool -> (dropout) -> linear, equal the plain class
#: activation map: d logit_c / d A_k(i,j) = w_ck / (h*w) at every position, so Grad-CAM and HiResCAM give
#: ReLU(sum_k w_ck A_k) / (h*w) (XGrad-CAM the same up to its 1e-7 guard), which min-max scaling turns into the same
#: map. ``cam_from_class_maps`` computes them from maps the forward pass already has.
LINEAR_HEAD_CAMS = frozenset({"Grad-CAM", "HiResCAM", "XGrad-CAM"})
#: On the same head LayerCAM is sum_k relu(w_ck) A_k, and Grad-CAM++ weighs channel k by relu(w_ck) * alpha_k with
#: alpha_k close to 1/2 when the gradient w_ck / (h*w) is small, so the two maps nearly coincide (mask-CN of
#: 2026-11-29 on four full-resolution HAM10000 images: at most 0.02-0.07 apart on the [0, 1] scale, while the offered
#: methods differ by more than 0.1). Grad-CAM++ stands for both.
LINEAR_HEAD_NEAR_DUPLICATES = frozenset({"LayerCAM"})
#: CAM methods whose map does not depend on the target class (EigenCAM: first principal component of the activations).
CLASS_AGNOSTIC_CAMS = frozenset({"EigenCAM"})


def distinct_class_cams(linear_head: bool = True) -> list[str]:
    """The CAM methods worth offering for a chosen target class, in CAM_METHOD_NAMES order: no class-agnostic
    method and, for a classifier with a GAP + linear head (``linear_head``, as mask-CN), only Grad-CAM of
    LINEAR_HEAD_CAMS and no LINEAR_HEAD_NEAR_DUPLICATES (they give the same or nearly the same map as an offered one
    there)."""
    repeats = (LINEAR_HEAD_CAMS - {"Grad-CAM"}) | LINEAR_HEAD_NEAR_DUPLICATES if linear_head else frozenset()
    return [m for m in CAM_METHOD_NAMES if m not in CLASS_AGNOSTIC_CAMS and m not in repeats]


def _scale_each(maps: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """pytorch-grad-cam's scale_cam_image for 2-D maps: each map minus its minimum, over (1e-7 + its maximum),
    resized (cv2, bilinear) to size = (width, height) when given."""
    out = []
    for heat in maps:
        heat = heat - np.min(heat)
        heat = heat / (1e-7 + np.max(heat))
        out.append(cv2.resize(np.float32(heat), size) if size is not None else heat)
    return np.float32(out)


def cam_from_class_maps(class_maps: torch.Tensor, class_index: int, input_size: tuple[int, int],
                        output_size: tuple[int, int] | None = None) -> np.ndarray:
    """Grad-CAM / HiResCAM / XGrad-CAM (LINEAR_HEAD_CAMS) of a GAP + linear classifier from its class activation
    maps (1 x classes x h x w), post-processed exactly as pytorch-grad-cam and ``compute_cam`` do, without their
    second forward and backward pass."""
    heat = np.maximum(class_maps[0, int(class_index)].float().cpu().numpy(), 0)[None]
    heat = np.maximum(_scale_each(heat, (input_size[1], input_size[0])), 0)  # per layer, as BaseCAM
    return to_unit_range(_scale_each(heat)[0], output_size)                  # layers aggregated, as BaseCAM


def to_unit_range(heat: np.ndarray, output_size: tuple[int, int] | None) -> np.ndarray:
    heat = np.nan_to_num(heat, nan=0.0, posinf=0.0, neginf=0.0)
    if output_size is not None and heat.shape != tuple(output_size):
        heat = cv2.resize(heat, (int(output_size[1]), int(output_size[0])), interpolation=cv2.INTER_LINEAR)
    lo, hi = float(heat.min()), float(heat.max())
    heat = (heat - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(heat)
    return np.clip(heat, 0.0, 1.0).astype(np.float32)


def overlay_heatmap(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a JET-coloured ``cam`` (H x W in [0, 1], resized to the image if needed) over ``rgb``."""
    img = as_rgb_u8(rgb)
    heat = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0)
    if heat.ndim != 2:
        raise ValueError(f"cam must be H x W, got shape {heat.shape}")
    h, w = img.shape[:2]
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    heat_u8 = np.uint8(np.rint(255 * np.clip(heat, 0.0, 1.0)))
    colour = cv2.cvtColor(cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    a = float(np.clip(alpha, 0.0, 1.0))
    return cv2.addWeighted(colour, a, img, 1.0 - a, 0.0)


def overlay_mask(
    rgb: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = (0, 255, 255),
    alpha: float = 0.3,
    contour: bool = True,
) -> np.ndarray:
    """Translucent ``color`` fill of ``mask`` over ``rgb`` plus (optionally) a 2-px contour line in ``color``."""
    img = as_rgb_u8(rgb)
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[:, :, 0]
    binary = m.astype(bool) if m.dtype == bool else (m > (127 if m.size and m.max() > 1 else 0))
    h, w = img.shape[:2]
    if binary.shape != (h, w):
        binary = cv2.resize(binary.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    a = float(np.clip(alpha, 0.0, 1.0))
    col = np.array(color, dtype=np.float32)[:3]
    out = img.copy()
    blended = img[binary].astype(np.float32) * (1.0 - a) + col * a
    out[binary] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if contour and binary.any():
        contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in col), thickness=2)
    return out
