"""4. One training epoch's time per stage, extrapolated from a fixed number of timed train steps.

Each step is train/train.py's loop body: model_inputs (normalise + batched augmentation), forward, loss_for,
AdamW zero_grad/backward/step, on a model from build_model with the blocks frozen as train/pipeline.py runs it
(segmenters --freeze-seg 3, classifiers the default 2) and set_train_mode. Inputs are real HAM10000 train images
and masks; the auxiliary inputs (coarse probabilities for mask-CN, localisation maps for enhanced-SN) are the
ground-truth masks resized, which costs the same as the real ones. Validation and data caching are not included.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

STAGES = ("coarse_sn", "mask_cn", "enhanced_sn", "classifier")
FREEZE = {"coarse_sn": 3, "enhanced_sn": 3, "mask_cn": 2, "classifier": 2}
HAM_TRAIN_IMAGES = 7009


def stage_config(stage: str, data_dir) -> dict:
    from train.train import CONFIG

    return dict(CONFIG, stage=stage, data_dir=str(data_dir), pretrained=None, freeze_blocks=FREEZE[stage],
                out_dir="", use_cache=False)


def train_step_time(stage: str, data_dir, steps: int = 20, warmup: int = 2, batch: int = 32) -> dict:
    from core.classes import NUM_CLASSES
    from core.losses import class_weights
    from core.tensors import CLASSIFIER_SIZE, SEGMENTER_SIZE
    from train.cache import load_split_arrays
    from train.train import build_model, forward, loss_for, model_inputs, set_train_mode, stage_manifest

    cfg = stage_config(stage, data_dir)
    train_table, _ = stage_manifest(cfg)
    n_train = len(train_table)
    pool = train_table.head(batch * 2).reset_index(drop=True)  # two distinct batches, reused cyclically
    classifier = stage in ("mask_cn", "classifier")
    size = CLASSIFIER_SIZE if classifier else SEGMENTER_SIZE
    images, _ = load_split_arrays(pool, size, with_masks=False, use_cache=False)
    _, masks = load_split_arrays(pool, SEGMENTER_SIZE, with_masks=True, use_cache=False)
    images = torch.from_numpy(images)
    masks = torch.from_numpy(masks).unsqueeze(1).float()
    from core.classes import class_index

    labels = torch.tensor([class_index(d) for d in pool["dx"]])
    if stage == "mask_cn":
        aux = masks  # stands in for coarse-SN probabilities (B,1,128,160)
    elif stage == "enhanced_sn":
        aux = F.interpolate(masks, size=(CLASSIFIER_SIZE[0] // 32 + 1, CLASSIFIER_SIZE[1] // 32 + 1), mode="area")
    else:
        aux = None

    torch.manual_seed(0)
    model = build_model(cfg, {})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    weights = class_weights(labels, NUM_CLASSES, cfg["class_weight_power"])
    generator = torch.Generator().manual_seed(0)
    set_train_mode(model, cfg["freeze_blocks"])

    def step(i: int) -> None:
        idx = torch.arange(batch) + (i % 2) * batch
        idx = idx[idx < len(labels)]
        x, a, m = model_inputs(cfg, images[idx], None if aux is None else aux[idx],
                               None if classifier else masks[idx], generator)
        loss = loss_for(cfg, forward(cfg, model, x, a), labels[idx], m, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(warmup):
        step(i)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    mean = float(np.mean(times))
    steps_per_epoch = n_train // batch
    return {"stage": stage, "batch": batch, "timed_steps": steps, "warmup_steps": warmup,
            "frozen_blocks": cfg["freeze_blocks"], "trainable_params": sum(p.numel() for p in params),
            "step_mean_s": mean, "step_median_s": float(np.median(times)), "images_per_s": batch / mean,
            "train_images": n_train, "epoch_s_extrapolated": mean * steps_per_epoch,
            "epoch_s_extrapolated_ham_train_7009": mean * (HAM_TRAIN_IMAGES // batch), "extrapolated": True}


def card_epoch_seconds(weights_dir) -> dict | None:
    """The epoch times the shipped model's own training recorded (model card training_curves), for comparison:
    taken under whatever else ran on the machine then, and on the training run's own number of images."""
    import json
    from pathlib import Path

    try:
        curves = json.loads((Path(weights_dir) / "model_card.json").read_text()).get("training_curves") or {}
    except (OSError, ValueError):
        return None
    return {stage: [row.get("seconds") for row in rows if isinstance(row, dict)]
            for stage, rows in curves.items() if isinstance(rows, list)}


def training_epochs(data_dir, steps: int = 20, stages=STAGES, batch: int = 32, weights_dir=None) -> dict:
    out = {stage: train_step_time(stage, data_dir, steps=steps, batch=batch) for stage in stages}
    if weights_dir is not None:
        out["model_card_epoch_seconds"] = card_epoch_seconds(weights_dir)
    out["note"] = (f"extrapolated: mean of {steps} timed steps x (train images // {batch}); the segmenters' train "
                   "split also holds ISIC 2017 train images (train_images), the 7,009-image HAM10000 figure is given too; "
                   "per-epoch validation is not included")
    return out
