"""A/B of a proposed change to core/inference.py: the Analyzer as the file is now (A) against the same file with
one or more patches applied (B), on real 600x450 HAM10000 images, interleaved, with an output comparison.

    nice -n 19 .venv/bin/python -m bench.experiments.ab_patch bench/experiments/fast_cam.patch [--n 20]
    nice -n 19 .venv/bin/python -m bench.experiments.ab_patch B.patch --base A.patch   # B's effect on top of A

The patched copy is written to a temporary folder and imported as its own module (core/ is not touched). Both
Analyzers load the same weights (bench.common.load_analyzer). Per image and mode, A and B run back to back in
alternating order, so machine-load drift hits both alike; `paired_ratio_median` (median of per-call B/A) is the
robust figure when something else uses the CPU. Modes:

- no_cam: analyze(rgb)
- cam:    analyze(rgb, cam=True)                                  (Grad-CAM)
- app:    analyze(rgb) then cam_for(rgb, label, "Grad-CAM")       (what the Analyze page does)
- cam_other: analyze(rgb) then cam_for(rgb, <second most likely class>, "Grad-CAM++")  (a non-linear CAM method)

Outputs compared on every image: refined and coarse masks (share of equal pixels), probabilities (max abs diff),
label, CAMs (max abs diff, correlation).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, data_dir, fullres_images, load_analyzer, summary

MODES = ("no_cam", "cam", "app", "cam_other")


def patched_module(patches: list[Path], name: str):
    """core/inference.py with `patches` applied (in order), imported as module `name`."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    (folder / "core").mkdir()
    (folder / "core" / "inference.py").write_bytes((REPO / "core" / "inference.py").read_bytes())
    for patch in patches:
        subprocess.run(["patch", "-p1", "--quiet", "--forward", "-d", str(folder), "-i", str(Path(patch).resolve())],
                       check=True)
    spec = importlib.util.spec_from_file_location(name, folder / "core" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _run(analyzer, rgb, mode: str):
    if mode == "no_cam":
        return analyzer.analyze(rgb), None
    if mode == "cam":
        r = analyzer.analyze(rgb, cam=True)
        return r, r.cam
    r = analyzer.analyze(rgb)
    if mode == "app":
        return r, analyzer.cam_for(rgb, r.label, "Grad-CAM")
    second = sorted(r.probs, key=r.probs.get)[-2]
    return r, analyzer.cam_for(rgb, second, "Grad-CAM++")


def _compare(ra, ca, rb, cb) -> dict:
    out = {"mask_equal": float((ra.mask == rb.mask).mean()), "coarse_equal": float((ra.coarse_mask == rb.coarse_mask).mean()),
           "probs_max_abs": max(abs(ra.probs[k] - rb.probs[k]) for k in ra.probs), "same_label": ra.label == rb.label}
    if ca is not None:
        out["cam_max_abs"] = float(np.abs(ca - cb).max())
        out["cam_corr"] = float(np.corrcoef(ca.ravel(), cb.ravel())[0, 1]) if ca.std() > 0 and cb.std() > 0 else None
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("patches", nargs="+", type=Path, help="patch files for B (applied in order)")
    parser.add_argument("--base", nargs="*", type=Path, default=[], help="patches already applied to A")
    parser.add_argument("--n", type=int, default=20, help="timed images")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    module_a = patched_module(args.base, "inference_a") if args.base else None
    module_b = patched_module(list(args.base) + list(args.patches), "inference_b")
    weights = REPO / "weights"
    a, note = load_analyzer(weights, module_a)
    b, _ = load_analyzer(weights, module_b)
    from core.intake import load_image

    images = fullres_images(data_dir(), args.warmup + args.n)
    rgbs = [load_image(data, name) for name, data in images]
    for rgb in rgbs[:args.warmup]:
        for mode in modes:
            _run(a, rgb, mode), _run(b, rgb, mode)
    times = {m: {"A": [], "B": []} for m in modes}
    checks = {m: [] for m in modes}
    for i, rgb in enumerate(rgbs[args.warmup:]):
        for j, mode in enumerate(modes):
            order = ("A", "B") if (i + j) % 2 == 0 else ("B", "A")
            outs = {}
            for side in order:
                analyzer = a if side == "A" else b
                start = time.perf_counter()
                outs[side] = _run(analyzer, rgb.copy(), mode)
                times[mode][side].append(time.perf_counter() - start)
            checks[mode].append(_compare(*outs["A"], *outs["B"]))
    result = {"patches": [str(p) for p in args.patches], "base": [str(p) for p in args.base], "weights": note,
              "n_images": args.n, "modes": {}}
    for mode in modes:
        ta, tb = np.asarray(times[mode]["A"]), np.asarray(times[mode]["B"])
        c = checks[mode]
        result["modes"][mode] = {
            "A": summary(ta), "B": summary(tb), "ratio_p50": float(np.median(tb) / np.median(ta)),
            "paired_ratio_median": float(np.median(tb / ta)),
            "saved_ms_p50": float(1000 * (np.median(ta) - np.median(tb))),
            "outputs": {
                "mask_equal_min": min(x["mask_equal"] for x in c), "coarse_equal_min": min(x["coarse_equal"] for x in c),
                "probs_max_abs": max(x["probs_max_abs"] for x in c), "same_label_all": all(x["same_label"] for x in c),
                **({"cam_max_abs": max(x["cam_max_abs"] for x in c),
                    "cam_corr_min": min((x["cam_corr"] for x in c if x["cam_corr"] is not None), default=None)}
                   if "cam_max_abs" in c[0] else {}),
            },
        }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return result


if __name__ == "__main__":
    main()
