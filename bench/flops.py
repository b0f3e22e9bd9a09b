"""6. FLOPs per image (torch.utils.flop_counter.FlopCounterMode, with a groups-aware convolution_backward formula)
and this machine's fp32 matmul peak."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """convolution_backward FLOPs that respect groups. torch's own formula counts the weight gradient of a grouped
    convolution as if it were dense: `groups` times too many, i.e. C times for a depthwise conv, which inflates an
    EfficientNet backward (Grad-CAM) about 40-fold. Each multiply-add of the forward has exactly one counterpart
    in the input gradient and one in the weight gradient, so each costs the forward's FLOPs."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn) -> int:
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})
    with counter:
        fn()
    return int(counter.get_total_flops())


def sample_inputs(analyzer, rgb: np.ndarray):
    from core.models.mbdcnn import localisation_class, localisation_map, mask_cn_input
    from core.imaging.tensors import normalize_batch

    seg_u8, cls_u8, _ = analyzer.network_images(rgb)
    with torch.no_grad():
        seg_x = normalize_batch(torch.from_numpy(seg_u8)[None])
        coarse = torch.sigmoid(analyzer.coarse_sn(seg_x))
        x4 = mask_cn_input(normalize_batch(torch.from_numpy(cls_u8)[None]), coarse)
        logits, features = analyzer.mask_cn.forward_with_features(x4)
        loc = localisation_map(analyzer.mask_cn.class_activation_maps(features), localisation_class(logits))
    return seg_x, x4, loc, int(logits.argmax(1))


def network_flops(analyzer, rgb: np.ndarray) -> dict:
    """FLOPs (2 x multiply-adds, as FlopCounterMode counts) for one image through each network, and for the
    Grad-CAM call (core.analysis.gradient_cam.compute_cam: mask-CN forward + backward to the input)."""
    from core.analysis.gradient_cam import compute_cam

    seg_x, x4, loc, top = sample_inputs(analyzer, rgb)
    with torch.no_grad():
        flops = {
            "coarse_sn": count_flops(lambda: analyzer.coarse_sn(seg_x)),
            "mask_cn": count_flops(lambda: analyzer.mask_cn.forward_with_features(x4)),
            "enhanced_sn": count_flops(lambda: analyzer.enhanced_sn(seg_x, loc)),
        }
    flops["cam_gradcam"] = count_flops(
        lambda: compute_cam(analyzer.mask_cn, x4.clone(), [analyzer.mask_cn.target_layer], top, "Grad-CAM"))
    flops["analysis_no_cam"] = flops["coarse_sn"] + flops["mask_cn"] + flops["enhanced_sn"]
    flops["analysis_cam"] = flops["analysis_no_cam"] + flops["cam_gradcam"]
    return flops


def matmul_peak(n: int = 2048, reps: int = 5) -> dict:
    """Best GFLOP/s of an n x n fp32 torch.mm (2 n^3 FLOPs) over reps, all torch threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return {"n": n, "reps": reps, "best_s": min(times), "gflops": 2 * n ** 3 / min(times) / 1e9,
            "median_gflops": 2 * n ** 3 / float(np.median(times)) / 1e9}


def utilisation(flops: int, seconds: float, peak_gflops: float) -> float:
    """Share of the matmul peak achieved: flops / seconds / peak."""
    return flops / seconds / (peak_gflops * 1e9)
