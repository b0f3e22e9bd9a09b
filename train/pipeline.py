"""Run the MB-DCNN stages in order (coarse-SN -> mask-CN -> enhanced-SN), optionally the image-only baseline.

    python -m train.pipeline --data-dir ../shared/data --runs runs [--epochs-cls 5 --epochs-seg 3 ...]

Each stage is `train.train` with the upstream checkpoints wired in; afterwards run `python -m train.evaluate`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from train import train as train_stage


def run_stage(stage: str, runs: Path, common: list[str], extra: list[str]) -> dict:
    started = time.time()
    result = train_stage.main(["--stage", stage, "--out-dir", str(runs / stage), *common, *extra])
    result["minutes"] = round((time.time() - started) / 60, 1)
    print(f"== {stage}: best {result['best']:.4f} in {result['minutes']} min", flush=True)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--epochs-seg", type=int, default=3)
    parser.add_argument("--epochs-enhanced", type=int, default=2)
    parser.add_argument("--epochs-cls", type=int, default=5)
    parser.add_argument("--minutes", default="", help="time budget per stage, e.g. coarse_sn=25,mask_cn=35 (hard stop)")
    parser.add_argument("--freeze-seg", type=int, default=3, help="frozen encoder stages of the segmenters")
    parser.add_argument("--skip-baseline", action="store_true", help="do not train the image-only classifier")
    parser.add_argument("--stages", default="coarse_sn,mask_cn,enhanced_sn,classifier")
    args, passthrough = parser.parse_known_args(argv)
    runs = Path(args.runs)
    common = ["--data-dir", args.data_dir, *passthrough]
    budgets = dict(item.split("=") for item in args.minutes.split(",") if item)
    coarse, mask_cn = str(runs / "coarse_sn" / "best.safetensors"), str(runs / "mask_cn" / "best.safetensors")
    plan = {
        "coarse_sn": ["--epochs", str(args.epochs_seg), "--freeze-blocks", str(args.freeze_seg)],
        "mask_cn": ["--epochs", str(args.epochs_cls), "--coarse-sn", coarse],
        "enhanced_sn": ["--epochs", str(args.epochs_enhanced), "--coarse-sn", coarse, "--mask-cn", mask_cn, "--lr", "5e-4",
                        "--freeze-blocks", str(args.freeze_seg)],
        "classifier": ["--epochs", str(args.epochs_cls)],
    }
    wanted = [s for s in args.stages.split(",") if not (s == "classifier" and args.skip_baseline)]
    results = {stage: run_stage(stage, runs, common + ["--max-minutes", budgets.get(stage, "0")], plan[stage])
               for stage in wanted}
    (runs / "pipeline.json").write_text(json.dumps(
        {s: {"best": r["best"], "minutes": r["minutes"], "epochs": len(r["history"])} for s, r in results.items()}, indent=1))
    return results


if __name__ == "__main__":
    main()
