"""2. Batch throughput (images/s) and peak memory: mask-CN alone and the whole 3-network pipeline."""
from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import PeakMemory, small_images


def _best_rate(fn, batch: int, reps: int) -> tuple[float, float, list[float]]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return batch / median, median, times


def batch_throughput(analyzer, root, batch: int = 32, reps: int = 3) -> dict:
    from core.models.mbdcnn import localisation_class, localisation_map, mask_cn_input
    from core.imaging.tensors import normalize_batch

    cls_u8 = torch.from_numpy(small_images(root, batch, analyzer.classifier_size, analyzer.classifier_preprocessing))
    seg_u8 = torch.from_numpy(small_images(root, batch, analyzer.segmenter_size, analyzer.preprocessing))
    with torch.inference_mode():
        coarse = torch.sigmoid(analyzer.coarse_sn(normalize_batch(seg_u8)))
        x4 = mask_cn_input(normalize_batch(cls_u8), coarse)  # (B,4,H,W) channels_last

    def classifier_only():
        with torch.inference_mode():
            return analyzer.mask_cn(x4)

    def pipeline():
        with torch.inference_mode():
            seg = normalize_batch(seg_u8)
            coarse_probs = torch.sigmoid(analyzer.coarse_sn(seg))
            x = mask_cn_input(normalize_batch(cls_u8), coarse_probs)
            logits, features = analyzer.mask_cn.forward_with_features(x)
            loc = localisation_map(analyzer.mask_cn.class_activation_maps(features), localisation_class(logits))
            return torch.sigmoid(analyzer.enhanced_sn(seg, loc))

    out = {"batch": batch, "reps": reps, "input": {"mask_cn": [4, *analyzer.classifier_size], "segmenters": [3, *analyzer.segmenter_size]},
           "memory_format": "channels_last", "mode": "torch.inference_mode"}
    for name, fn in (("mask_cn", classifier_only), ("pipeline", pipeline)):
        fn()  # warm-up (allocator, oneDNN primitives)
        with PeakMemory() as mem:
            rate, median, times = _best_rate(fn, batch, reps)
        out[name] = {"images_per_s": rate, "batch_median_s": median, "batch_times_s": times,
                     "peak_rss_delta_mib": mem.delta_mib, "peak_rss_mib": mem.peak_mib, "memory_method": mem.method}
    return out
