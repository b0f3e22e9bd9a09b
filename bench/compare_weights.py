"""Two weights folders timed in one run: the full analysis with Grad-CAM of the shipped weights against a candidate's,
interleaved image by image, so that machine load hits both alike (the 1.5x budget of a retrained model).

    nice -n 19 .venv/bin/python -m bench.compare_weights --candidate runs/weights_v3 --n-images 30

For each of N real 600x450 HAM10000 JPEGs (after warm-up images): decode, then `analyze(rgb, cam=True)` with one
Analyzer and then the other (which goes first alternates). Reports p50 / p95 of each and the ratio of the p50s
(candidate / shipped) with a bootstrap 95 % CI over images (paired: the same images resampled for both).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, data_dir, fullres_images, load_analyzer, machine, summary


def interleaved_times(analyzers: dict, images: list[tuple[str, bytes]], warm: int) -> dict[str, list[float]]:
    """Seconds of decode + analyze(cam=True) per image for each analyzer; the first `warm` images are not kept."""
    from core.io.intake import load_image

    names = list(analyzers)
    seconds = {name: [] for name in names}
    for i, (file_name, data) in enumerate(images):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            analyzers[name].analyze(load_image(data, file_name), cam=True)
            if i >= warm:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def p50_ratio(base: list[float], candidate: list[float], draws: int = 2000, seed: int = 0) -> dict:
    """p50(candidate) / p50(base) and its paired bootstrap 95 % CI over images."""
    base, candidate = np.asarray(base), np.asarray(candidate)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(base), size=(draws, len(base)))
    ratios = np.median(candidate[picks], axis=1) / np.median(base[picks], axis=1)
    return {"ratio": float(np.median(candidate) / np.median(base)),
            "ci95": [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]}


def compare(shipped: Path, candidate: Path, n_images: int, warm: int) -> dict:
    analyzers, notes = {}, {}
    for name, folder in (("shipped", shipped), ("candidate", candidate)):
        analyzers[name], notes[name] = load_analyzer(folder)
    seconds = interleaved_times(analyzers, fullres_images(data_dir(), n_images + warm), warm)
    return {"machine": machine(), "weights": {"shipped": str(shipped), "candidate": str(candidate)},
            "loaded_by": notes, "n_images": n_images, "warmup": warm,
            "full_cam": {name: summary(values) for name, values in seconds.items()},
            "candidate_over_shipped": p50_ratio(seconds["shipped"], seconds["candidate"])}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.compare_weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=REPO / "weights", help="the shipped weights folder")
    parser.add_argument("--candidate", type=Path, required=True, help="the weights folder to compare with it")
    parser.add_argument("--n-images", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the result here as JSON")
    args = parser.parse_args(argv)
    result = compare(args.weights, args.candidate, args.n_images, args.warmup)
    for name, stats in result["full_cam"].items():
        print(f"{name:9s} analysis with Grad-CAM: p50 {stats['p50_ms']:.1f} ms, p95 {stats['p95_ms']:.1f} ms "
              f"({result['weights'][name]})")
    ratio = result["candidate_over_shipped"]
    print(f"candidate / shipped p50: {ratio['ratio']:.2f}x [{ratio['ci95'][0]:.2f}, {ratio['ci95'][1]:.2f}] "
          f"on {result['machine'].get('cpu', 'this CPU')}, load {result['machine'].get('loadavg')}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
