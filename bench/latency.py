"""1. Per-stage latency of one analysis and full-analysis p50/p95, with and without Grad-CAM."""
from __future__ import annotations

import time

from bench.common import summary

STAGES = ("decode", "preprocess", "coarse_sn", "mask_cn", "enhanced_sn", "measurements", "cam")


def analysis_latency(analyzer, images: list[tuple[str, bytes]], warm: list[tuple[str, bytes]] = (),
                     cam_method: str = "Grad-CAM") -> dict:
    """For each image: decode (core.intake.load_image on the bytes), analyze(cam=False), analyze(cam=True).

    The two modes alternate on every image, so drift in machine load hits both alike. `full` = decode + the
    wall time of Analyzer.analyze (what a user waits for after the upload arrives)."""
    from core.intake import load_image

    for name, data in warm:  # warm-up images, not timed
        rgb = load_image(data, name)
        analyzer.analyze(rgb)
        analyzer.analyze(rgb, cam=True, cam_method=cam_method)

    stages = {s: [] for s in STAGES}
    full = {"no_cam": [], "cam": []}
    analyze_only = {"no_cam": [], "cam": []}
    for i, (name, data) in enumerate(images):
        start = time.perf_counter()
        rgb = load_image(data, name)
        decode = time.perf_counter() - start
        stages["decode"].append(decode)
        order = (False, True) if i % 2 == 0 else (True, False)
        for cam in order:
            start = time.perf_counter()
            result = analyzer.analyze(rgb, cam=cam, cam_method=cam_method)
            wall = time.perf_counter() - start
            key = "cam" if cam else "no_cam"
            full[key].append(decode + wall)
            analyze_only[key].append(wall)
            if cam:
                stages["cam"].append(result.timings["cam"])
            else:
                for stage in ("preprocess", "coarse_sn", "mask_cn", "enhanced_sn", "measurements"):
                    stages[stage].append(result.timings[stage])
    return {
        "n_images": len(images), "warmup": len(warm), "image_size": [int(rgb.shape[1]), int(rgb.shape[0])],
        "cam_method": cam_method,
        "stages": {s: summary(v) for s, v in stages.items()},
        "full_no_cam": summary(full["no_cam"]), "full_cam": summary(full["cam"]),
        "analyze_no_cam": summary(analyze_only["no_cam"]), "analyze_cam": summary(analyze_only["cam"]),
    }
