"""The CAM methods of pytorch-grad-cam (Grad-CAM++, Score-CAM, EigenCAM, ...) on any CNN layer: a forward and, for
most, a backward pass of their own. Imported only when such a method is asked for (pytorch-grad-cam pulls in
SciPy, scikit-learn and torchvision transforms: 1.8 s); Grad-CAM of mask-CN's linear head needs none of it
(core.analysis.cam.cam_from_class_maps).

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

import numpy as np
import pytorch_grad_cam.score_cam as _score_cam
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from core.analysis.cam import CAM_METHOD_NAMES, to_unit_range

__all__ = ["CAM_METHODS", "SCORE_CAM_BATCH_SIZE", "SignedEigenCAM", "compute_cam", "model_lock"]


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
CAM_METHODS: dict[str, type] = dict(zip(CAM_METHOD_NAMES, (GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM, LayerCAM,
                                                          ScoreCAM, SignedEigenCAM), strict=True))


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

    return to_unit_range(np.asarray(result[0], dtype=np.float32), output_size)
