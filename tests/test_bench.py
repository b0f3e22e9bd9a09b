"""bench: `python -m bench --quick` runs end to end on real data and writes a complete results JSON.

No timing thresholds (this machine's load varies): every section ran, has its structure, and its numbers obey the
invariants that hold on any machine (percentiles ordered, totals = sum of their parts, ratios = the quotient of the
two figures they name).
Browser cold start and training-step timing are skipped here (slow); they use the same code paths as the app
test (tests/test_browser.py) and train/train.py's functions.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench import run as bench_run


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_summary(stats: dict, n: int, name: str) -> None:
    """bench.common.summary of n positive timings: ordered min <= p50 <= p95, min <= mean."""
    assert set(stats) == {"n", "p50_ms", "p95_ms", "mean_ms", "min_ms"}, name
    assert stats["n"] == n, name
    assert _positive(stats["min_ms"]), name
    assert stats["min_ms"] <= stats["p50_ms"] <= stats["p95_ms"], (name, stats)
    assert stats["min_ms"] <= stats["mean_ms"], (name, stats)


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory, data_dir, monkeypatch_module):
    monkeypatch_module.setenv("DATA_DIR", str(data_dir))
    out = tmp_path_factory.mktemp("bench")
    code = bench_run.main(["--quick", "--n-images", "2", "--skip-browser", "--skip-train", "--out", str(out)])
    latest = out / "latest.json"
    assert latest.is_file()
    stamped = [p for p in out.glob("*.json") if p.name != "latest.json"]
    assert len(stamped) == 1 and stamped[0].read_text() == latest.read_text()
    return code, json.loads(latest.read_text())


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_every_section_ran(quick_results):
    code, results = quick_results
    errors = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    assert code == 0 and not errors, errors
    for key in ("latency", "throughput", "matmul_peak", "flops", "reference", "utilisation", "machine", "model"):
        assert key in results, key
    assert "training" not in results and "cold_start" not in results  # skipped on request
    assert results["quick"] is True


def test_latency_structure_and_totals(quick_results):
    lat = quick_results[1]["latency"]
    assert lat["n_images"] == 2 and lat["image_size"] == [600, 450]
    stages = ("decode", "preprocess", "networks", "rules", "measurements", "cam", "cam_for")
    assert set(lat["stages"]) == set(stages)
    for stage in stages:
        _check_summary(lat["stages"][stage], 2, stage)
    for key in ("full_no_cam", "full_cam", "full_app", "analyze_no_cam", "analyze_cam", "analyze_then_cam_for"):
        _check_summary(lat[key], 2, key)
    # full = decode + the calls, image by image, so their means add up exactly
    for full, calls in (("full_no_cam", "analyze_no_cam"), ("full_cam", "analyze_cam"), ("full_app", "analyze_then_cam_for")):
        assert lat[full]["mean_ms"] == pytest.approx(lat["stages"]["decode"]["mean_ms"] + lat[calls]["mean_ms"]), full
    # one analyze() call lasts at least as long as its timed stages together
    inside = sum(lat["stages"][s]["mean_ms"] for s in ("preprocess", "networks", "rules", "measurements"))
    assert inside <= lat["analyze_no_cam"]["mean_ms"]


def test_throughput_is_batch_over_median_time(quick_results):
    thr = quick_results[1]["throughput"]
    assert thr["input"]["mask_cn"] == [4, 150, 200]
    assert thr["reps"] == 3  # --quick: enough batches for a median that is not their minimum
    for name in ("mask_cn", "pipeline"):
        part = thr[name]
        assert len(part["batch_times_s"]) == thr["reps"], name
        assert part["batch_median_s"] == pytest.approx(float(np.median(part["batch_times_s"]))), name
        assert part["images_per_s"] == pytest.approx(thr["batch"] / part["batch_median_s"]), name
        assert 0 <= part["peak_rss_delta_mib"] <= part["peak_rss_mib"], name


def test_flops_add_up_and_utilisation_is_their_quotient(quick_results):
    results = quick_results[1]
    f = results["flops"]
    for key in ("coarse_sn", "mask_cn", "enhanced_sn", "cam_gradcam"):
        assert isinstance(f[key], int) and f[key] > 0, key
    assert f["analysis_no_cam"] == f["coarse_sn"] + f["mask_cn"] + f["enhanced_sn"]
    assert f["analysis_cam"] == f["analysis_no_cam"] + f["cam_gradcam"]
    # Grad-CAM = a mask-CN forward and a backward (input + weight gradients, each one forward's worth): between
    # one and three forwards. torch's own convolution_backward formula ignores groups (~40x for EfficientNet).
    assert f["mask_cn"] < f["cam_gradcam"] <= 3 * f["mask_cn"]
    peak = results["matmul_peak"]
    assert peak["gflops"] == pytest.approx(2 * peak["n"] ** 3 / peak["best_s"] / 1e9)
    assert peak["median_gflops"] <= peak["gflops"]
    util = results["utilisation"]
    assert util["peak_gflops"] == peak["gflops"]
    for key in ("analyze_no_cam", "analyze_cam"):
        part = util[key]
        assert part["flops"] == f["analysis_" + key.split("_", 1)[1]], key
        assert part["p50_s"] == pytest.approx(results["latency"][key]["p50_ms"] / 1000), key
        assert part["achieved_gflops"] == pytest.approx(part["flops"] / part["p50_s"] / 1e9), key
        assert part["share_of_peak"] == pytest.approx(part["achieved_gflops"] / peak["gflops"]), key


def test_reference_ratios_are_quotients_of_the_medians(quick_results):
    ref = quick_results[1]["reference"]
    _check_summary(ref["ours"], ref["iterations"], "ours")
    for name in ("reference_same_size", "reference_224"):
        part = ref[name]
        _check_summary({k: part[k] for k in ("n", "p50_ms", "p95_ms", "mean_ms", "min_ms")}, ref["iterations"], name)
        assert part["ratio_vs_ours_p50"] == pytest.approx(part["p50_ms"] / ref["ours"]["p50_ms"]), name
        assert part["flops"]["analysis_cam"] > part["flops"]["classifier"] > 0, name
        # a ResNet-50 classifier alone is ~4 GFLOPs at 224x224: far heavier than EfficientNet-Lite0
        assert part["flops"]["classifier"] > quick_results[1]["flops"]["mask_cn"], name
    assert ref["reference_224"]["flops"]["segmenter"] > ref["reference_same_size"]["flops"]["segmenter"]
    from core.decisions.model_card import read_card_json

    sizes = read_card_json(Path(__file__).resolve().parent.parent / "weights")["input_size"]
    assert ref["reference_same_size"]["sizes"] == {name: [sizes[name]["height"], sizes[name]["width"]]
                                                  for name in ("segmenter", "classifier")}


def test_table_renders(quick_results):
    text = bench_run.table(quick_results[1])
    for heading in ("1. One analysis", "2. Batch throughput", "3. App cold start", "4. Training epoch",
                    "5. vs a typical", "6. FLOPs"):
        assert heading in text
    assert "skipped (--skip-browser)" in text and "skipped (--skip-train)" in text
    assert "7. Targets" in text and "analysis_cam_p50_ms" in text


def test_targets_follow_the_measurements(quick_results):
    results = quick_results[1]
    t = results["targets"]
    assert set(t) == {"analysis_cam_p50_ms", "reference_ratio", "classifier_images_per_s", "cold_start_s", "train_epoch_s",
                      "train_speedup_vs_fp32", "runtime_install_gb"}
    assert t["runtime_install_gb"]["value"] == results["install"]["gb"]
    assert t["analysis_cam_p50_ms"]["value"] == results["latency"]["full_cam"]["p50_ms"]
    assert t["analysis_cam_p50_ms"]["met"] == (results["latency"]["full_cam"]["p50_ms"] <= 60)
    assert t["classifier_images_per_s"]["value"] == results["throughput"]["mask_cn"]["images_per_s"]
    assert t["cold_start_s"]["value"] is None and t["cold_start_s"]["met"] is None  # skipped
    # the verdict is computed, not stored: a fabricated slow analysis misses the target
    slow = json.loads(json.dumps(results))
    slow["latency"]["full_cam"]["p50_ms"] = 151.0
    slow["training"] = {s: {"epoch_s_extrapolated_ham_train_7009": v}
                        for s, v in (("coarse_sn", 10.0), ("mask_cn", 301.0))}
    slow["training"]["coarse_sn_speedup_vs_fp32"] = 1.5
    verdict = bench_run.targets(slow)
    assert verdict["analysis_cam_p50_ms"]["met"] is False
    assert verdict["train_epoch_s"]["value"] == 301.0 and verdict["train_epoch_s"]["met"] is False
    assert verdict["train_speedup_vs_fp32"]["value"] == 1.5 and verdict["train_speedup_vs_fp32"]["met"] is False


def test_backward_flops_respect_groups():
    """A depthwise conv's forward + backward (input and weight gradients) is three forwards' worth of FLOPs."""
    import torch

    from bench.flops import count_flops

    conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)
    x = torch.randn(1, 32, 16, 16, requires_grad=True)
    forward = count_flops(lambda: conv(x))
    assert forward == 2 * 9 * 32 * 16 * 16
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward
    conv.requires_grad_(False)  # only the input gradient
    assert count_flops(lambda: conv(x).sum().backward()) == 2 * forward


def test_two_weights_folders_are_timed_image_by_image(repo_root, data_dir, monkeypatch):
    """bench.compare_weights: both analyzers timed on the same images after the warm-up, the ratio is the quotient of
    the two p50s and its paired bootstrap CI contains it."""
    from bench import compare_weights

    monkeypatch.setenv("DATA_DIR", str(data_dir))
    result = compare_weights.compare(repo_root / "weights", repo_root / "weights", n_images=3, warm=1)
    shipped, candidate = result["full_cam"]["shipped"], result["full_cam"]["candidate"]
    _check_summary(shipped, 3, "shipped")
    _check_summary(candidate, 3, "candidate")
    ratio = result["candidate_over_shipped"]
    assert ratio["ratio"] == pytest.approx(candidate["p50_ms"] / shipped["p50_ms"])
    assert ratio["ci95"][0] <= ratio["ratio"] <= ratio["ci95"][1]


def test_the_paired_ratio_follows_the_candidate():
    from bench.compare_weights import p50_ratio

    base = [0.10, 0.11, 0.12, 0.13, 0.14]
    doubled = p50_ratio(base, [2 * t for t in base])
    assert doubled["ratio"] == pytest.approx(2.0) and doubled["ci95"] == pytest.approx([2.0, 2.0])
