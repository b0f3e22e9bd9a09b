"""Train one LesionLens network (one MB-DCNN stage, or the image-only baseline classifier).

    python -m train.train --stage coarse_sn   --data-dir ../shared/data
    python -m train.train --stage mask_cn     --data-dir ../shared/data --coarse-sn runs/coarse_sn/best.safetensors
    python -m train.train --stage enhanced_sn --data-dir ../shared/data --coarse-sn ... --mask-cn runs/mask_cn/best.safetensors
    python -m train.train --stage classifier  --data-dir ../shared/data
    torchrun --nproc_per_node 2 -m train.train ...      # DistributedDataParallel (gloo on CPU, nccl on GPU)

Every key of CONFIG is a CLI flag (--max-minutes 20, --epochs 3 ...). Writes OUT_DIR/best.safetensors (best
validation epoch: balanced accuracy for classifiers, Dice for segmenters), last_state.pt (for --resume) and
history.json (training curve).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.metrics import balanced_accuracy_score
from tqdm import tqdm

from core.classes import NUM_CLASSES, class_index
from core.data import apply_split_file, assign_splits, load_manifest
from core.losses import class_weights, hybrid_loss
from core.models import create_model
from core.pipeline import classify_with_localisation, coarse_probabilities, mask_cn_input
from core.tensors import CLASSIFIER_SIZE, SEGMENTER_SIZE, normalize_batch
from core.weights_io import save_weights
from train.cache import load_split_arrays

CONFIG = dict(
    stage="classifier",          # coarse_sn | mask_cn | enhanced_sn | classifier
    data_dir=os.environ.get("DATA_DIR", "../shared/data"),
    split_file="",               # a train.splits CSV; empty = the deterministic default split (seed 42)
    out_dir="",                  # default runs/<stage>
    backbone="efficientnet_lite0",
    pretrained="package",        # package | hub | none
    coarse_sn="",                # checkpoint of coarse-SN (needed by mask_cn, enhanced_sn; initialises enhanced_sn)
    mask_cn="",                  # checkpoint of mask-CN (needed by enhanced_sn)
    with_isic=True,              # segmenters also train on ISIC 2017 train
    epochs=6,
    max_minutes=0.0,             # stop after the epoch that crosses this budget (0 = no budget)
    batch_size=32,
    lr=1e-3,
    weight_decay=1e-4,
    poly_power=0.9,              # poly LR decay, as in the MB-DCNN code
    freeze_blocks=2,             # freeze stem + first N stages (generic edges/colours; cheap CPU backward)
    class_weight_power=0.7,      # CE weights = inverse frequency ** power
    label_smoothing=0.05,
    rank_lambda=0.05, rank_k=30, rank_margin=0.3,
    patience=3,                  # early stopping on the validation metric
    seed=42,
    threads=0,                   # torch threads (0 = torch default)
    max_train_batches=0,         # >0: cut each epoch short (tests, smoke runs)
    max_val_images=0,            # >0: validate on a subset (tests)
    max_train_images=0,          # >0: train on a subset (tests, smoke runs)
    resume=False,
    use_cache=True,
)
CLASSIFIER_STAGES = ("mask_cn", "classifier")


def parse_args(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, default in CONFIG.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, type=lambda v: v.lower() in ("1", "true", "yes"), default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    cfg = vars(parser.parse_args(argv))
    cfg["out_dir"] = cfg["out_dir"] or f"runs/{cfg['stage']}"
    cfg["pretrained"] = None if cfg["pretrained"] == "none" else cfg["pretrained"]
    return cfg


# ---------------------------------------------------------------- distributed
@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime() -> Runtime:
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        return Runtime(rank, world, device)
    return Runtime(device=device)


# ---------------------------------------------------------------- data
@dataclass
class Split:
    images: torch.Tensor            # (N,H,W,3) uint8 at the stage's input size
    labels: torch.Tensor            # (N,) int64
    masks: torch.Tensor | None      # (N,1,H,W) float {0,1} (segmenters)
    aux: torch.Tensor | None        # coarse probabilities (mask_cn) or localisation maps (enhanced_sn)

    def __len__(self) -> int:
        return len(self.labels)


def stage_manifest(cfg: dict):
    manifest = load_manifest(cfg["data_dir"])
    manifest = apply_split_file(manifest, cfg["split_file"]) if cfg["split_file"] else assign_splits(manifest, cfg["seed"])
    if cfg["stage"] in CLASSIFIER_STAGES or not cfg["with_isic"]:
        manifest = manifest[manifest["source"] == "ham10000"]
    else:
        manifest = manifest[manifest["mask_path"] != ""]
    train = manifest[manifest["split"] == "train"].reset_index(drop=True)
    # Validation (model selection) stays on HAM10000 val for every stage.
    val = manifest[(manifest["split"] == "val") & (manifest["source"] == "ham10000")].reset_index(drop=True)
    if cfg["max_train_images"]:
        train = train.sample(n=min(cfg["max_train_images"], len(train)), random_state=cfg["seed"]).reset_index(drop=True)
    if cfg["max_val_images"]:
        val = val.sample(n=min(cfg["max_val_images"], len(val)), random_state=cfg["seed"]).reset_index(drop=True)
    return train, val


def load_checkpoint(arch: str, path: str, backbone: str) -> torch.nn.Module:
    if not path:
        raise SystemExit(f"this stage needs --{arch.replace('_', '-')} PATH (a best.safetensors from that stage)")
    model = create_model(arch, backbone, pretrained=None)
    model.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    return model.eval()


def build_split(cfg: dict, table, upstream: dict) -> Split:
    stage = cfg["stage"]
    labels = torch.tensor([class_index(d) for d in table["dx"]])
    if stage == "classifier":
        images, _ = load_split_arrays(table, CLASSIFIER_SIZE, with_masks=False, use_cache=cfg["use_cache"])
        return Split(torch.from_numpy(images), labels, None, None)
    seg_images, masks = load_split_arrays(table, SEGMENTER_SIZE, with_masks=True, use_cache=cfg["use_cache"])
    seg_images = torch.from_numpy(seg_images)
    masks = torch.from_numpy(masks).unsqueeze(1).float()
    if stage == "coarse_sn":
        return Split(seg_images, labels, masks, None)
    coarse = coarse_probabilities(upstream["coarse_sn"], normalize_batch(seg_images))
    cls_images, _ = load_split_arrays(table, CLASSIFIER_SIZE, with_masks=False, use_cache=cfg["use_cache"])
    cls_images = torch.from_numpy(cls_images)
    if stage == "mask_cn":
        return Split(cls_images, labels, None, coarse)
    _, localisation = classify_with_localisation(upstream["mask_cn"], mask_cn_input(normalize_batch(cls_images), coarse))
    return Split(seg_images, labels, masks, localisation)


# ---------------------------------------------------------------- augmentation (batched, on tensors)
def augment(x: torch.Tensor, others: list[torch.Tensor | None], generator: torch.Generator):
    """Random flips, 90-degree-free rotation/scale (affine) and brightness/contrast jitter.

    Geometric changes are applied identically to the image and to every spatial tensor in `others` (masks,
    coarse probabilities, localisation maps), so they stay aligned."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.pi  # any rotation: lesions have no "up"
    scale = 1 + (torch.rand(b, generator=generator) * 2 - 1) * 0.15
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * 0.08
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)

    def warp(t: torch.Tensor, mode: str) -> torch.Tensor:
        grid = F.affine_grid(theta.to(t), list(t.shape), align_corners=False)
        return F.grid_sample(t, grid, mode=mode, padding_mode="reflection", align_corners=False)

    x = warp(x, "bilinear")
    brightness = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * 0.1
    contrast = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * 0.1
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean * brightness
    warped = [None if t is None else warp(t, "bilinear") for t in others]
    return x.contiguous(memory_format=torch.channels_last), warped


# ---------------------------------------------------------------- model
def build_model(cfg: dict, upstream: dict) -> torch.nn.Module:
    stage = cfg["stage"]
    model = create_model(stage, cfg["backbone"], cfg["pretrained"])
    if stage == "enhanced_sn" and "coarse_sn" in upstream:
        # Warm start from coarse-SN: same U-Net, only the E-layers are new.
        missing, unexpected = model.load_state_dict(upstream["coarse_sn"].state_dict(), strict=False)
        assert not unexpected and all(k.startswith("e_layers") for k in missing), (missing, unexpected)
    freeze_early(model, cfg["freeze_blocks"])
    return model.to(memory_format=torch.channels_last)


def timm_backbone(model: torch.nn.Module) -> torch.nn.Module:
    return model.net if hasattr(model, "net") else model.unet.encoder.model


def frozen_modules(model: torch.nn.Module, n_blocks: int) -> list[torch.nn.Module]:
    if n_blocks <= 0:
        return []
    backbone = timm_backbone(model)
    return [backbone.conv_stem, backbone.bn1] + list(backbone.blocks[:n_blocks])


def freeze_early(model: torch.nn.Module, n_blocks: int) -> None:
    for module in frozen_modules(model, n_blocks):
        for parameter in module.parameters():
            parameter.requires_grad_(False)


def set_train_mode(model: torch.nn.Module, n_frozen_blocks: int) -> None:
    model.train()
    for module in frozen_modules(model, n_frozen_blocks):
        module.eval()  # frozen BN keeps its ImageNet statistics


# ---------------------------------------------------------------- one step / validation
def model_inputs(cfg: dict, images_uint8: torch.Tensor, aux: torch.Tensor | None, masks: torch.Tensor | None,
                 generator: torch.Generator | None):
    x = normalize_batch(images_uint8)
    if generator is not None:
        x, (aux, masks) = augment(x, [aux, masks], generator)
        masks = None if masks is None else (masks > 0.5).float()
    if cfg["stage"] == "mask_cn":
        x = mask_cn_input(x, aux)
    return x, aux, masks


def forward(cfg: dict, model, x, aux):
    return model(x, aux) if cfg["stage"] == "enhanced_sn" else model(x)


def loss_for(cfg: dict, output, labels, masks, weights):
    if cfg["stage"] in CLASSIFIER_STAGES:
        return F.cross_entropy(output.float(), labels, weight=weights, label_smoothing=cfg["label_smoothing"])
    return hybrid_loss(output.float(), masks, cfg["rank_lambda"], cfg["rank_k"], cfg["rank_margin"])


@torch.no_grad()
def validate(cfg: dict, model, split: Split, device) -> float:
    """Balanced accuracy (classifiers) or mean Dice at the network's resolution (segmenters)."""
    model.eval()
    scores, preds = [], []
    for start in range(0, len(split), 64):
        sl = slice(start, start + 64)
        aux = None if split.aux is None else split.aux[sl].to(device)
        masks = None if split.masks is None else split.masks[sl].to(device)
        x, aux, _ = model_inputs(cfg, split.images[sl].to(device), aux, None, None)
        out = forward(cfg, model, x, aux).float()
        if cfg["stage"] in CLASSIFIER_STAGES:
            preds.append(out.argmax(1).cpu())
        else:
            pred = (out > 0).float()
            inter = (pred * masks).flatten(1).sum(1)
            denom = pred.flatten(1).sum(1) + masks.flatten(1).sum(1)
            scores.append(torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom)).cpu())
    if cfg["stage"] in CLASSIFIER_STAGES:
        return float(balanced_accuracy_score(split.labels.numpy(), torch.cat(preds).numpy()))
    return float(torch.cat(scores).mean())


# ---------------------------------------------------------------- main loop
def out_of_time(cfg: dict, started: float) -> bool:
    return bool(cfg["max_minutes"]) and (time.time() - started) / 60 >= cfg["max_minutes"]


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    rt = setup_runtime()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    out_dir = Path(cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)

    upstream = {}
    if cfg["stage"] in ("mask_cn", "enhanced_sn"):
        upstream["coarse_sn"] = load_checkpoint("coarse_sn", cfg["coarse_sn"], cfg["backbone"])
    if cfg["stage"] == "enhanced_sn":
        upstream["mask_cn"] = load_checkpoint("mask_cn", cfg["mask_cn"], cfg["backbone"])
    train_table, val_table = stage_manifest(cfg)
    train, val = build_split(cfg, train_table, upstream), build_split(cfg, val_table, upstream)

    model = build_model(cfg, upstream).to(rt.device)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if rt.world > 1 else model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    weights = class_weights(train.labels, NUM_CLASSES, cfg["class_weight_power"]).to(rt.device)

    n_batches = len(train) // (cfg["batch_size"] * rt.world)
    if cfg["max_train_batches"]:
        n_batches = min(n_batches, cfg["max_train_batches"])
    total_steps = max(1, n_batches * cfg["epochs"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (1 - min(s, total_steps - 1) / total_steps) ** cfg["poly_power"])

    history, best, start_epoch, stale = [], -1.0, 0, 0
    state_path = out_dir / "last_state.pt"
    if cfg["resume"] and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, start_epoch, stale = json.loads(state["history"]), state["best"], state["epoch"] + 1, state["stale"]

    started = time.time()
    generator = torch.Generator().manual_seed(cfg["seed"] + rt.rank)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=rt.device.type == "cuda")
    for epoch in range(start_epoch, cfg["epochs"]):
        epoch_start = time.time()
        set_train_mode(model, cfg["freeze_blocks"])
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg["seed"] * 1000 + epoch))
        order = order[rt.rank::rt.world]
        losses = []
        bar = tqdm(range(n_batches), desc=f"{cfg['stage']} epoch {epoch + 1}/{cfg['epochs']}", disable=not rt.main)
        for step in bar:
            if out_of_time(cfg, started):
                break  # hard budget: validate what we have and stop
            idx = order[step * cfg["batch_size"]:(step + 1) * cfg["batch_size"]]
            aux = None if train.aux is None else train.aux[idx].to(rt.device)
            masks = None if train.masks is None else train.masks[idx].to(rt.device)
            x, aux, masks = model_inputs(cfg, train.images[idx].to(rt.device), aux, masks, generator)
            with autocast:
                output = forward(cfg, ddp_model, x, aux)
            loss = loss_for(cfg, output, train.labels[idx].to(rt.device), masks, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        metric = validate(cfg, model, val, rt.device) if rt.main else 0.0
        record = {"epoch": epoch + 1, "steps": len(losses), "train_loss": round(float(np.mean(losses)), 5), "val_metric": round(metric, 5),
                  "seconds": round(time.time() - epoch_start, 1), "images_per_second": round(len(losses) * cfg["batch_size"] * rt.world / (time.time() - epoch_start), 1)}
        history.append(record)
        if rt.main:
            print(json.dumps(record), flush=True)
            if metric > best:
                best, stale = metric, 0
                save_weights(model, out_dir / "best.safetensors", half=False)
            else:
                stale += 1
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "history": json.dumps(history), "best": best, "epoch": epoch, "stale": stale}, state_path)
            (out_dir / "history.json").write_text(json.dumps({"config": cfg, "history": history, "best": best}, indent=1))
        if rt.world > 1:
            flags = torch.tensor([stale], dtype=torch.float32)
            dist.broadcast(flags, 0)
            stale = int(flags.item())
        if stale >= cfg["patience"] or out_of_time(cfg, started):
            break
    if rt.world > 1:
        for buffer in model.buffers():  # DDP broadcasts rank 0's BN statistics before each forward; once more after the last
            dist.broadcast(buffer, 0)
        save_weights(model, out_dir / f"final_rank{rt.rank}.safetensors", half=False)
        dist.barrier()
        dist.destroy_process_group()
    return {"best": best, "history": history, "out_dir": str(out_dir)}


if __name__ == "__main__":
    main()
