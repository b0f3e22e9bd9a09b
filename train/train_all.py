"""Train every network in dependency order, each through train.train, then the E-layer ablation controls.

    python -m train.train_all --data-dir ../shared/data --runs runs [--epochs-seg 12 --epochs-cls 25 ...]

Stages: coarse_sn -> mask_cn (validated on coarse-SN's output) -> enhanced_sn (warm start from coarse-SN, fed
mask-CN's localisation maps); the image-only classifier (ablation baseline); and two controls for the E-layers:
coarse_sn_more (coarse-SN trained the same extra epochs as enhanced-SN, from the same start) and enhanced_sn_zero
(enhanced-SN fed all-zero maps). Stages run in the order --stages gives (mask-CN needs a coarse-SN only for its
validation masks: --mask-cn-validation-coarse-sn lets it train before the new coarse-SN). Any other flag is passed
to every stage (e.g. --threads 2). Every stage checkpoints each epoch: a finished stage is skipped and an
interrupted one resumes exactly, so re-running the same command after a kill continues where it stopped.
Afterwards run `python -m calibration.evaluate`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from train import train as train_stage

ORDER = ("coarse_sn", "mask_cn", "enhanced_sn", "coarse_sn_more", "enhanced_sn_zero", "classifier")


def plan(args, runs: Path) -> dict[str, list[str]]:
    coarse, mask_cn = str(runs / "coarse_sn" / "best.safetensors"), str(runs / "mask_cn" / "best.safetensors")
    segmenter = ["--amp", args.seg_amp]
    classifier = ["--epochs", str(args.epochs_cls), "--freeze-blocks", str(args.cls_freeze)]
    fine_tune = ["--epochs", str(args.epochs_enhanced), "--lr", str(args.lr_enhanced), "--warmup-epochs", "0.2"]
    return {
        "coarse_sn": ["--stage", "coarse_sn", "--epochs", str(args.epochs_seg), *segmenter],
        "mask_cn": ["--stage", "mask_cn", *classifier, "--coarse-sn", args.mask_cn_validation_coarse_sn or coarse],
        "enhanced_sn": ["--stage", "enhanced_sn", *fine_tune, *segmenter, "--coarse-sn", coarse, "--mask-cn", mask_cn],
        "coarse_sn_more": ["--stage", "coarse_sn", *fine_tune, *segmenter, "--init", coarse],
        "enhanced_sn_zero": ["--stage", "enhanced_sn", *fine_tune, *segmenter, "--coarse-sn", coarse, "--mask-cn", mask_cn,
                             "--zero-localisation", "true"],
        "classifier": ["--stage", "classifier", *classifier],
    }


def finished(out_dir: Path, epochs_flag: list[str]) -> bool:
    """The stage ran all its epochs, or early stopping ended it (its --patience epochs without a better validation
    score than the best; train.train would otherwise resume it and train one more epoch on every re-run)."""
    history = out_dir / "history.json"
    if not history.is_file():
        return False
    saved = json.loads(history.read_text())
    epochs = int(epochs_flag[epochs_flag.index("--epochs") + 1])
    scores = [record["val_metric"] for record in saved["history"]]
    if len(scores) >= epochs:
        return True
    patience = int(saved["config"].get("patience") or 0)
    best = scores.index(max(scores)) if scores else 0  # train.train keeps the first epoch of the best score
    return bool(patience and scores and len(scores) - 1 - best >= patience)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--epochs-seg", type=int, default=12)
    parser.add_argument("--epochs-cls", type=int, default=25)
    parser.add_argument("--epochs-enhanced", type=int, default=3)
    parser.add_argument("--lr-enhanced", type=float, default=3e-4)
    parser.add_argument("--seg-amp", default="auto", help="autocast of the segmenters (auto = train.train's "
                                                          "default: bf16 on CUDA and on a CPU with AMX or AVX512-BF16)")
    parser.add_argument("--cls-freeze", type=int, default=0, help="frozen early stages of the classifiers")
    parser.add_argument("--mask-cn-validation-coarse-sn", default="",
                        help="coarse-SN weights for mask-CN's validation masks (default: RUNS/coarse_sn)")
    parser.add_argument("--stages", default=",".join(ORDER))
    args, passthrough = parser.parse_known_args(argv)
    runs = Path(args.runs)
    steps = plan(args, runs)
    results = {}
    for name in args.stages.split(","):
        if name not in steps:
            parser.error(f"unknown stage {name!r}; choose from {', '.join(ORDER)}")
        out_dir = runs / name
        if finished(out_dir, steps[name]):
            print(f"== {name}: finished earlier ({out_dir / 'history.json'})", flush=True)
            continue
        result = train_stage.main([*steps[name], "--data-dir", args.data_dir, "--out-dir", str(out_dir),
                                   "--resume", "true", *passthrough])
        results[name] = {"best": result["best"], "finished": result["finished"]}
        print(f"== {name}: best validation score {result['best']:.4f}", flush=True)
        if not result["finished"]:
            print("== stopped by --max-minutes: run the same command again to continue", flush=True)
            break
    return results


if __name__ == "__main__":
    main()
