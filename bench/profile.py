"""Where one full analysis spends its time: torch.profiler over Analyzer.analyze(rgb, cam=True) with the shipped
test-time augmentation, on real 600x450 HAM10000 images (after warm-up), top operators by self CPU time.

    python -m bench.profile [--n-images 10] [--top 10] [--weights weights] [--no-pack]

LESIONLENS_PRECISION=fp32 / bf16 overrides the precision core.models.precision picks; --no-pack keeps plain
convolution modules (core.models.cpu_inference not applied): together, the analysis as it ran before either.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.common import REPO, data_dir, fullres_images, load_analyzer, summary
from core.models import cpu_support


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--weights", default=str(REPO / "weights"))
    parser.add_argument("--no-pack", action="store_true", help="plain convolution modules (no oneDNN packing)")
    args = parser.parse_args(argv)
    from core.io.intake import load_image

    analyzer, note = load_analyzer(Path(args.weights), pack=not args.no_pack)
    images = [load_image(data, name) for name, data in fullres_images(data_dir(), args.warmup + args.n_images)]
    for rgb in images[:args.warmup]:
        analyzer.analyze(rgb, cam=True)
    walls = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for rgb in images[args.warmup:]:
            start = time.perf_counter()
            with record_function("Analyzer.analyze(cam=True)"):
                analyzer.analyze(rgb, cam=True)
            walls.append(time.perf_counter() - start)
    print(f"{note}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{cpu_support.describe()}, precision {analyzer.precision}, "
          f"{'plain' if args.no_pack else 'packed'} convolutions")
    print(f"{args.n_images} analyses under the profiler: wall per analysis {summary(walls)}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))


if __name__ == "__main__":
    main()
