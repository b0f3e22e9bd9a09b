"""Inference engines against the torch path: do they agree on validation images, and are they faster?

    python -m bench.engines [--threads 2] [--reps 10] [--n-images 100] [--engines onnxruntime,openvino]

Agreement: each engine's Analyzer (core.analysis.onnx_engine) against the torch one in the same precision (fp32, and
OpenVINO in bf16 against torch bf16 where the CPU runs bf16), on HAM10000 validation images with a mask
(bench.precision.validation_rows), within TOLERANCE (bf16: bench.precision.TOLERANCE). Speed: each network alone on the shapes the analysis gives it
(coarse-SN and enhanced-SN 1x3x192x256, mask-CN's 8 test-time views as 8x4x150x200 and as the analysis runs them,
4 x 150x200 + 4 transposed), then the whole analysis with Grad-CAM of 600x450 images, the engines interleaved run by
run so that a busy machine slows each alike.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from bench.common import REPO, data_dir, fullres_images, summary
from bench.precision import TOLERANCE as BF16_TOLERANCE, compare, validation_rows, violations

#: What an fp32 engine must keep against torch fp32 (the acceptance of the engine: top class and referral the same on
#: >= 99.5 % of validation images, masks Dice >= 0.99; probabilities to float32 rounding)
TOLERANCE = {"max_probability_difference": 1e-4, "mean_probability_difference": 1e-5, "same_label_share": 0.995,
             "same_refer_share": 0.995, "min_mask_dice_between_precisions": 0.99,
             "dice_vs_truth_mean_difference": 1e-3}


def network_inputs() -> dict[str, tuple[str, list[tuple]]]:
    """{case: (network, [inputs of one call, ...])}, channels_last like the analysis' tensors."""
    generator = torch.Generator().manual_seed(0)

    def x(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).contiguous(memory_format=torch.channels_last)

    seg = x(1, 3, 192, 256)
    return {"coarse_sn 1x3x192x256": ("coarse_sn", [(seg,)]),
            "enhanced_sn 1x3x192x256": ("enhanced_sn", [(seg, torch.rand(1, 1, 5, 7, generator=generator))]),
            "mask_cn 8x4x150x200": ("mask_cn", [(x(8, 4, 150, 200),)]),
            "mask_cn 4x4x150x200 + 4x4x200x150": ("mask_cn", [(x(4, 4, 150, 200),), (x(4, 4, 200, 150),)])}


def _forward(analyzer, network: str):
    if network == "mask_cn":
        return analyzer.mask_cn_forward.forward_with_features
    return getattr(analyzer, network)


def interleaved(functions: dict, reps: int, warmup: int = 2) -> dict:
    """Wall times of each function, called in turn rep by rep (A, B, C, A, B, C, ...)."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    walls = {name: [] for name in functions}
    for _ in range(reps):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            walls[name].append(time.perf_counter() - start)
    return walls


def network_speed(analyzers: dict, reps: int) -> dict:
    out = {}
    for case, (network, calls) in network_inputs().items():
        def run(analyzer, network=network, calls=calls):
            with torch.inference_mode():
                for inputs in calls:
                    _forward(analyzer, network)(*inputs)

        walls = interleaved({name: (lambda a=a: run(a)) for name, a in analyzers.items()}, reps)
        out[case] = {name: summary(w) for name, w in walls.items()}
    return out


def analysis_speed(analyzers: dict, n_images: int, reps: int) -> dict:
    from core.io.intake import load_image

    images = [load_image(data, name) for name, data in fullres_images(data_dir(), n_images)]
    walls = {name: [] for name in analyzers}
    for _ in range(reps):
        for rgb in images:
            for name, wall in interleaved({n: (lambda a=a: a.analyze(rgb, cam=True)) for n, a in analyzers.items()},
                                          1, warmup=0).items():
                walls[name] += wall
    return {name: summary(w) for name, w in walls.items()}


def _progress(section: str, result: dict) -> None:
    """Each section to stderr as soon as it is measured (a long run cut short keeps what it had)."""
    print(json.dumps({section: result[section]}), file=sys.stderr, flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10, help="timed runs per network and engine")
    parser.add_argument("--n-images", type=int, default=100, help="validation images for the agreement (0: none)")
    parser.add_argument("--engines", default="onnxruntime,openvino")
    parser.add_argument("--weights", default=str(REPO / "weights"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from core.analysis.inference import Analyzer
    from core.models.cpu_support import cpu_runs_bf16, describe

    engines = [e for e in args.engines.split(",") if e]
    precisions = ["fp32"] + (["bf16"] if cpu_runs_bf16() else [])
    analyzers = {f"torch {p}": Analyzer.load(args.weights, device="cpu", precision=p, engine="torch")
                 for p in precisions}
    for engine in engines:
        for p in (precisions if engine == "openvino" else ["fp32"]):
            analyzers[f"{engine} {p}"] = Analyzer.load(args.weights, device="cpu", precision=p, engine=engine)
    result = {"cpu": describe(), "threads": args.threads, "loadavg_before": open("/proc/loadavg").read().split()[:3]}
    result["networks"] = network_speed(analyzers, args.reps)
    _progress("networks", result)
    result["analysis_with_cam_600x450"] = analysis_speed(analyzers, 5, max(1, args.reps // 5))
    _progress("analysis_with_cam_600x450", result)
    if args.n_images:
        rows = validation_rows(args.n_images)
        result["agreement"] = {}
        for name, analyzer in analyzers.items():
            engine, precision = name.split()
            if engine == "torch":
                continue
            agreement = compare({f"torch {precision}": analyzers[f"torch {precision}"], name: analyzer}, rows)
            result["agreement"][name] = {"vs": f"torch {precision}", **agreement,
                                         "violations": violations(agreement, TOLERANCE if precision == "fp32"
                                                                  else BF16_TOLERANCE)}
            _progress("agreement", result)
    result["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
