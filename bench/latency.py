"""1. Per-stage latency of one analysis and full-analysis p50/p95, with and without Grad-CAM, and the Analyze
page's own path (analyze, then cam_for for the heat map)."""
from __future__ import annotations

import time

from bench.common import summary

STAGES = ("decode", "preprocess", "networks", "rules", "measurements", "cam", "cam_for")
MODES = ("no_cam", "cam", "app")


def _analysis(analyzer, rgb, mode: str, cam_method: str):
    """(result, seconds of analyze, seconds of cam_for or 0)."""
    start = time.perf_counter()
    result = analyzer.analyze(rgb, cam=mode == "cam", cam_method=cam_method)
    wall = time.perf_counter() - start
    if mode != "app":
        return result, wall, 0.0
    start = time.perf_counter()
    analyzer.cam_for(rgb, result.label, cam_method)
    return result, wall, time.perf_counter() - start


def analysis_latency(analyzer, images: list[tuple[str, bytes]], warm: list[tuple[str, bytes]] = (),
                     cam_method: str = "Grad-CAM") -> dict:
    """For each image: decode (core.io.intake.load_image on the bytes), then three ways of analysing it:

    - no_cam: analyze(rgb)
    - cam:    analyze(rgb, cam=True)
    - app:    analyze(rgb) then cam_for(rgb, label, cam_method) — what app_pages/analyze.py does for one upload

    The order of the three rotates from image to image, so drift in machine load hits all alike. `full_*` = decode
    + the wall time of the calls (what a user waits for once the upload has arrived)."""
    from core.io.intake import load_image

    for name, data in warm:  # warm-up images, not timed
        rgb = load_image(data, name)
        for mode in MODES:
            _analysis(analyzer, rgb, mode, cam_method)

    stages = {s: [] for s in STAGES}
    full = {m: [] for m in MODES}
    calls = {m: [] for m in MODES}
    for i, (name, data) in enumerate(images):
        start = time.perf_counter()
        rgb = load_image(data, name)
        decode = time.perf_counter() - start
        stages["decode"].append(decode)
        shift = i % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            result, wall, cam_for = _analysis(analyzer, rgb.copy(), mode, cam_method)
            full[mode].append(decode + wall + cam_for)
            calls[mode].append(wall + cam_for)
            if mode == "cam":
                stages["cam"].append(result.timings["cam"])
            elif mode == "app":
                stages["cam_for"].append(cam_for)
            else:
                for stage in ("preprocess", "networks", "rules", "measurements"):
                    stages[stage].append(result.timings[stage])
    return {
        "n_images": len(images), "warmup": len(warm), "image_size": [int(rgb.shape[1]), int(rgb.shape[0])],
        "cam_method": cam_method,
        "stages": {s: summary(v) for s, v in stages.items()},
        "full_no_cam": summary(full["no_cam"]), "full_cam": summary(full["cam"]), "full_app": summary(full["app"]),
        "analyze_no_cam": summary(calls["no_cam"]), "analyze_cam": summary(calls["cam"]),
        "analyze_then_cam_for": summary(calls["app"]),
    }
