"""Experiment: Grad-CAM on mask-CN equals its plain CAM, which analyze() already computes.

mask-CN's head is global-average-pool -> (dropout, identity in eval) -> linear. For the target layer (bn2, whose
output is the pooled feature map A), d logit_c / d A_k(i,j) = w_ck / (h*w) everywhere, so the Grad-CAM weights are
alpha_k = w_ck / (h*w) and Grad-CAM_c = ReLU(sum_k w_ck A_k) / (h*w) = ReLU(CAM_c) up to a positive scale, which the
min-max normalisation removes. (HiResCAM and XGrad-CAM reduce to the same map; Grad-CAM++ / Score-CAM / EigenCAM
do not.) So the Grad-CAM stage (a second mask-CN forward + a backward to the input) can be replaced by a resize of
`class_activation_maps(features)` that _analyze already holds.

This script checks the claim numerically on real images with the shipped weights and times both.

    nice -n 19 .venv/bin/python -m bench.experiments.cam_from_features [--n 10]
"""
from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np
import torch

from bench.common import REPO, data_dir, fullres_images, load_analyzer
from core.cam import compute_cam
from core.intake import load_image
from core.pipeline import mask_cn_input
from core.tensors import CLASSIFIER_SIZE, SEGMENTER_SIZE, image_to_batch


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(a)


def cam_from_features(mask_cn, features: torch.Tensor, class_index: int, input_hw, output_hw) -> np.ndarray:
    """What compute_cam(..., "Grad-CAM") returns, from features already computed: same ReLU, the same two
    resizes (to the network input as pytorch-grad-cam does, then to the image) and min-max normalisations."""
    cam = mask_cn.class_activation_maps(features)[0, class_index].clamp(min=0).float().cpu().numpy()
    cam = _minmax(cam)
    cam = cv2.resize(cam, (input_hw[1], input_hw[0]))          # pytorch-grad-cam scale_cam_image
    cam = _minmax(cam)
    cam = cv2.resize(cam, (output_hw[1], output_hw[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(_minmax(cam), 0, 1).astype(np.float32)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10)
    args = parser.parse_args(argv)
    analyzer, note = load_analyzer(REPO / "weights")
    mask_cn = analyzer.mask_cn
    rows = []
    for name, data in fullres_images(data_dir(), args.n + 1):
        rgb = load_image(data, name)
        with torch.inference_mode():
            coarse = torch.sigmoid(analyzer.coarse_sn(image_to_batch(rgb, SEGMENTER_SIZE)))
            x4 = mask_cn_input(image_to_batch(rgb, CLASSIFIER_SIZE), coarse)
            logits, features = mask_cn.forward_with_features(x4)
        top = int(logits.argmax())
        start = time.perf_counter()
        grad = compute_cam(mask_cn, x4.clone(), [mask_cn.target_layer], top, "Grad-CAM", output_size=rgb.shape[:2])
        t_grad = time.perf_counter() - start
        start = time.perf_counter()
        with torch.inference_mode():
            fast = cam_from_features(mask_cn, features, top, CLASSIFIER_SIZE, rgb.shape[:2])
        t_fast = time.perf_counter() - start
        rows.append({"image": name, "max_abs_diff": float(np.abs(grad - fast).max()),
                     "mean_abs_diff": float(np.abs(grad - fast).mean()),
                     "corr": float(np.corrcoef(grad.ravel(), fast.ravel())[0, 1]) if grad.std() > 0 and fast.std() > 0 else None,
                     "gradcam_ms": t_grad * 1000, "from_features_ms": t_fast * 1000})
    rows = rows[1:]  # first one warms up grad-cam's imports
    out = {"weights": note, "n": len(rows),
           "max_abs_diff": max(r["max_abs_diff"] for r in rows),
           "mean_abs_diff": float(np.mean([r["mean_abs_diff"] for r in rows])),
           "gradcam_ms_median": float(np.median([r["gradcam_ms"] for r in rows])),
           "from_features_ms_median": float(np.median([r["from_features_ms"] for r in rows])),
           "rows": rows}
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))
    return out


if __name__ == "__main__":
    main()
