"""Class activation maps (pytorch-grad-cam) and image overlays.

``compute_cam`` builds a fresh CAM object for every call and uses it as a context manager, so the forward
hooks it registers on ``target_layers`` are always removed again.  Hooks live on the (shared) model, though,
so two CAMs computed on the same model at the same time would see each other's activations; every call
therefore holds a per-model lock (``model_lock(model)``).  Plain inference that runs concurrently on the same
model can take the same lock to be sure its forward pass never goes through a CAM's hooks (the hooks only
append to the CAM object's own lists, so an unlocked forward is harmless to itself but could corrupt an
in-flight CAM).
"""
from __future__ import annotations

import threading
import weakref
from types import SimpleNamespace

import cv2
import numpy as np
import torch
import pytorch_grad_cam.score_cam as _score_cam
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from core.imaging.preprocess import as_rgb_u8

__all__ = ["CAM_METHODS", "CLASS_AGNOSTIC_CAMS", "LINEAR_HEAD_CAMS", "LINEAR_HEAD_NEAR_DUPLICATES", "SignedEigenCAM",
           "SCORE_CAM_BATCH_SIZE", "cam_from_class_maps", "compute_cam", "distinct_class_cams", "model_lock",
           "overlay_heatmap", "overlay_mask"]

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


class SignedEigenCAM(EigenCAM):
    """EigenCAM with the sign of the first principal component fixed.

    The SVD leaves the sign of the component arbitrary, so plain EigenCAM can come out inverted (the
    background "hot" and the object cold) depending on floating-point details.  Here the sign is chosen so
    that the projection correlates positively with the total activation (sum over channels), i.e. strongly
    activated places are hot.  Class-agnostic, like EigenCAM.
    """

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        acts = np.nan_to_num(np.asarray(activations, dtype=np.float64))
        out = []
        for a in acts:  # a: C x H x W
            flat = a.reshape(a.shape[0], -1).T  # (H*W) x C
            centred = flat - flat.mean(axis=0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            proj = centred @ vt[0]
            energy = flat.sum(axis=1)
            if np.dot(proj - proj.mean(), energy - energy.mean()) < 0:
                proj = -proj
            out.append(proj.reshape(a.shape[1:]))
        return np.float32(out)


#: Display name -> pytorch-grad-cam class.  All work on a CNN target layer with a single classifier output.
CAM_METHODS: dict[str, type] = {
    "Grad-CAM": GradCAM,
    "Grad-CAM++": GradCAMPlusPlus,
    "HiResCAM": HiResCAM,
    "XGrad-CAM": XGradCAM,
    "LayerCAM": LayerCAM,
    "Score-CAM": ScoreCAM,
    "EigenCAM": SignedEigenCAM,
}


def distinct_class_cams(linear_head: bool = True) -> list[str]:
    """The CAM methods worth offering for a chosen target class, in CAM_METHODS order: no class-agnostic method and,
    for a classifier with a GAP + linear head (``linear_head``, as mask-CN), only Grad-CAM of LINEAR_HEAD_CAMS and no
    LINEAR_HEAD_NEAR_DUPLICATES (they give the same or nearly the same map as an offered one there)."""
    repeats = (LINEAR_HEAD_CAMS - {"Grad-CAM"}) | LINEAR_HEAD_NEAR_DUPLICATES if linear_head else frozenset()
    return [m for m in CAM_METHODS if m not in CLASS_AGNOSTIC_CAMS and m not in repeats]


#: Masked inputs per forward pass in Score-CAM (one pass per channel of the target layer; small = low memory).
SCORE_CAM_BATCH_SIZE = 8

_progress = threading.local()  # this thread's Score-CAM progress callback (compute_cam's `progress`)


def _channel_batches(batches, **_):
    """Score-CAM's loop over batches of masked inputs, in place of its tqdm bar on the server's stderr: reports the
    share done to the calling thread's `progress` callback instead."""
    report = getattr(_progress, "callback", None)
    for done, batch in enumerate(batches):
        if report is not None:
            report(done / len(batches))
        yield batch


_score_cam.tqdm = SimpleNamespace(tqdm=_channel_batches)  # affects only pytorch-grad-cam's score_cam module

_registry_guard = threading.Lock()
_model_locks: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that ``compute_cam`` holds on ``model`` while hooks are attached."""
    with _registry_guard:
        lock = _model_locks.get(model)
        if lock is None:
            lock = threading.RLock()
            _model_locks[model] = lock
        return lock


def _resolve_method(method: str) -> type:
    try:
        return CAM_METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown CAM method {method!r}; choose one of: {', '.join(CAM_METHODS)}") from None


def compute_cam(
    model: nn.Module,
    input_tensor: torch.Tensor,
    target_layers: list[nn.Module],
    class_index: int,
    method: str = "Grad-CAM",
    output_size: tuple[int, int] | None = None,
    progress=None,
) -> np.ndarray:
    """Class activation map of ``class_index`` for one image.

    ``input_tensor`` is 1 x C x H x W (any C: the mask-guided classifier takes RGB + mask, C = 4), already
    normalised the way ``model`` expects.  ``target_layers`` are modules of ``model`` (usually the last conv
    block).  Returns an H x W float32 array in [0, 1] at the input resolution, or at ``output_size`` = (H, W)
    when given (cv2 INTER_LINEAR).  ``progress(share)`` is called with the share done while Score-CAM (one
    forward pass per batch of feature channels, seconds to minutes) runs.  Works whether or not the caller is inside ``torch.no_grad`` /
    ``inference_mode`` and whether or not the model's parameters require gradients.  The model is put in
    eval mode (as pytorch-grad-cam does) and its parameter gradients are cleared afterwards.
    """
    cam_cls = _resolve_method(method)
    if not isinstance(input_tensor, torch.Tensor) or input_tensor.ndim != 4 or input_tensor.shape[0] != 1:
        shape = tuple(input_tensor.shape) if isinstance(input_tensor, torch.Tensor) else type(input_tensor)
        raise ValueError(f"input_tensor must be a 1 x C x H x W tensor, got {shape}")
    if not target_layers:
        raise ValueError("target_layers must name at least one module of the model")
    class_index = int(class_index)
    if output_size is not None:
        out_h, out_w = (int(v) for v in output_size)
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"output_size must be positive (H, W), got {output_size!r}")

    with model_lock(model), torch.inference_mode(False), torch.enable_grad():
        # A fresh leaf that requires grad: the target activations then carry gradients even if the
        # parameters are frozen, and an inference-mode tensor from the caller becomes usable by autograd.
        device = next(model.parameters()).device
        x = input_tensor.detach().clone().to(device).requires_grad_(True)
        result = None
        _progress.callback = progress
        try:
            with cam_cls(model=model, target_layers=list(target_layers)) as cam:
                if cam_cls is ScoreCAM:
                    cam.batch_size = SCORE_CAM_BATCH_SIZE
                result = cam(input_tensor=x, targets=[ClassifierOutputTarget(class_index)])
        finally:
            _progress.callback = None
            model.zero_grad(set_to_none=True)
    if result is None:
        # pytorch-grad-cam's __exit__ swallows IndexError (e.g. a bad class index) - don't return garbage.
        raise ValueError(f"{method} failed for class index {class_index} (is it within the model's outputs?)")

    return _to_unit_range(np.asarray(result[0], dtype=np.float32), output_size)


def cam_from_class_maps(class_maps: torch.Tensor, class_index: int, input_size: tuple[int, int],
                        output_size: tuple[int, int] | None = None) -> np.ndarray:
    """Grad-CAM / HiResCAM / XGrad-CAM (LINEAR_HEAD_CAMS) of a GAP + linear classifier from its class activation
    maps (1 x classes x h x w), post-processed exactly as pytorch-grad-cam and ``compute_cam`` do, without their
    second forward and backward pass."""
    heat = np.maximum(class_maps[0, int(class_index)].float().cpu().numpy(), 0)[None]
    heat = np.maximum(scale_cam_image(heat, (input_size[1], input_size[0])), 0)  # per layer, as BaseCAM
    return _to_unit_range(scale_cam_image(heat)[0], output_size)                 # layers aggregated, as BaseCAM


def _to_unit_range(heat: np.ndarray, output_size: tuple[int, int] | None) -> np.ndarray:
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
