"""4. Training throughput: images/s of one training step of each stage, on real images, through train.train's code.

    python -m bench.training [--steps 20] [--batch 32] [--freeze-blocks 0] [--amp auto|none|bf16] [--threads 0]
                             [--stages coarse_sn,mask_cn,enhanced_sn,classifier] [--image-size HxW]

A step is exactly the loop body of train/train.py: stage.batch (memory-mapped uint8 cache -> batched augmentation
-> normalisation), forward (under the --amp autocast), stage.loss, AdamW zero_grad/backward/step, EMA update. The
model is built by train.train.build_model with the ImageNet weights (denormal-heavy random weights would time
differently). Inputs are real training images from the decode-once cache; enhanced-SN's localisation maps are
random maps of the right shape (computing the real ones needs trained upstream networks and costs the same).
`data_ms` is the batch-building part of a step. Validation and the one-off cache decoding are not included.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

STAGES = ("coarse_sn", "mask_cn", "enhanced_sn", "classifier")
HAM_TRAIN_IMAGES = 7009


def step_throughput(stage_name: str, data_dir, steps: int = 20, warmup: int = 2, batch: int = 32, **overrides) -> dict:
    from train.stages import STAGES as STAGE_CLASSES, CoarseSNStage
    from train.train import CONFIG, autocast_for, build_model, resolve_amp, set_train_mode, split_tables
    from train.schedule import EMA

    cfg = dict(CONFIG, stage=stage_name, data_dir=str(data_dir), out_dir="", batch_size=batch, **overrides)
    stage = STAGE_CLASSES[stage_name](cfg)
    train_table, _ = split_tables(cfg)
    pool = train_table.sample(n=batch * 2, random_state=0).reset_index(drop=True)
    if stage_name == "enhanced_sn":
        arrays = CoarseSNStage.load(stage, pool, True)
        h, w = stage.size
        arrays.aux = torch.rand(len(pool), 1, h // 32 + 1, w // 32 + 1)
    else:
        arrays = stage.load(pool, True)
    stage.prepare(arrays)
    torch.manual_seed(0)
    model = build_model(cfg, stage)
    autocast, _ = autocast_for(cfg, torch.device("cpu"), stage, model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"],
                                  weight_decay=cfg["weight_decay"])
    ema = EMA(model, cfg["ema"]) if cfg["ema"] > 0 else None
    generator = torch.Generator().manual_seed(0)
    set_train_mode(model, cfg["freeze_blocks"])

    def step(i: int) -> tuple[float, float]:
        start = time.perf_counter()
        idx = np.arange(batch) + (i % 2) * batch
        inputs, target = stage.batch(arrays, idx, generator)
        data = time.perf_counter() - start
        with autocast:
            output = model(*inputs)
        loss = stage.loss(output, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        return time.perf_counter() - start, data

    for i in range(warmup):
        step(i)
    timed = [step(i) for i in range(steps)]
    total, data = np.array([t for t, _ in timed]), np.array([d for _, d in timed])
    return {"stage": stage_name, "input_size": f"{stage.size[0]}x{stage.size[1]}", "batch": batch, "timed_steps": steps,
            "freeze_blocks": cfg["freeze_blocks"], "amp": resolve_amp(cfg, torch.device("cpu"), stage), "ema": cfg["ema"],
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "step_mean_s": float(total.mean()), "step_median_s": float(np.median(total)),
            "data_ms": float(np.median(data) * 1000), "images_per_s": batch / float(np.median(total)),
            "train_images": int(arrays.repeats.sum()) if arrays.repeats is not None else len(train_table),
            "epoch_s_extrapolated_ham_train_7009": float(np.median(total)) * (HAM_TRAIN_IMAGES // batch),
            "extrapolated": True}


def card_epoch_seconds(weights_dir) -> dict | None:
    """The epoch times the shipped model's own training recorded (model card training_curves), for comparison."""
    from pathlib import Path

    try:
        curves = json.loads((Path(weights_dir) / "model_card.json").read_text()).get("training_curves") or {}
    except (OSError, ValueError):
        return None
    return {stage: [row.get("seconds") for row in rows if isinstance(row, dict)]
            for stage, rows in curves.items() if isinstance(rows, list)}


def training_epochs(data_dir, steps: int = 20, stages=STAGES, batch: int = 32, weights_dir=None, **overrides) -> dict:
    out = {stage: step_throughput(stage, data_dir, steps=steps, batch=batch, **overrides) for stage in stages}
    if "coarse_sn" in stages and overrides.get("amp", "auto") == "auto":
        # issue 25: the training default (bf16 where the CPU has it) against fp32, same stage, same run
        fp32 = step_throughput("coarse_sn", data_dir, steps=steps, batch=batch, **{**overrides, "amp": "none"})
        out["coarse_sn_fp32"] = fp32
        out["coarse_sn_speedup_vs_fp32"] = fp32["step_median_s"] / out["coarse_sn"]["step_median_s"]
    if weights_dir is not None:
        out["model_card_epoch_seconds"] = card_epoch_seconds(weights_dir)
    out["note"] = (f"median of {steps} timed train steps (train.train's loop body, real cached images); epoch seconds "
                   f"extrapolated to the 7,009 HAM10000 train images; validation not included")
    return out


def main(argv=None) -> dict:
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "../shared/data"))
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--freeze-blocks", type=int, default=0)
    parser.add_argument("--amp", default="auto", choices=("auto", "none", "bf16"),
                        help="auto: train.train's default (bf16 for the segmenters on a CPU with AMX or AVX512-BF16)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--image-size", default="", help="HxW for every stage (default: each stage's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = training_epochs(args.data_dir, steps=args.steps, stages=args.stages.split(","), batch=args.batch,
                          freeze_blocks=args.freeze_blocks, amp=args.amp, image_size=args.image_size)
    print(f"{'stage':<12} {'input':>8} {'amp':>5} {'img/s':>7} {'step s':>7} {'data ms':>8}  (freeze {args.freeze_blocks}, "
          f"--amp {args.amp}, batch {args.batch}, torch threads {torch.get_num_threads()})")
    for stage in args.stages.split(","):
        s = out[stage]
        print(f"{stage:<12} {s['input_size']:>8} {s['amp']:>5} {s['images_per_s']:>7.1f} {s['step_median_s']:>7.3f} "
              f"{s['data_ms']:>8.1f}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
