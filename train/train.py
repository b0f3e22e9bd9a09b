"""Train one LesionLens network: one loop for every stage (train/stages.py says what a stage reads and computes).

    python -m train.train --stage coarse_sn   --data-dir ../shared/data
    python -m train.train --stage mask_cn     --data-dir ../shared/data --coarse-sn runs/coarse_sn/best.safetensors
    python -m train.train --stage enhanced_sn --data-dir ../shared/data --coarse-sn ... --mask-cn runs/mask_cn/best.safetensors
    python -m train.train --stage classifier  --data-dir ../shared/data
    python -m train.train ... --max-minutes 60 --resume true     # a long run in pieces, each resumed exactly
    torchrun --nproc_per_node 2 -m train.train ...                 # DistributedDataParallel (gloo on CPU, nccl on GPU)

Every key of CONFIG is a CLI flag (--max-minutes 20, --epochs 3 ...). OUT_DIR gets best.safetensors (the epoch
with the best validation score; the EMA weights when --ema > 0; metadata: input size, preprocessing, backbone),
last_state.pt (everything needed to resume exactly, written atomically at every epoch end and when --max-minutes
stops a run mid-epoch) and history.json (one line per epoch).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
import tomllib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from core.data.acquisition import acquisition_sources
from core.data.datasets import SOURCES, load_manifest
from core.models.precision import cpu_has_bf16
from core.data.splits import split_by
from core.io.weights_io import save_weights
from train.autocast_policy import keep_depthwise_in_fp32
from train.checkpoint import load_state, restore_rng, rng_state, save_state
from train.schedule import EMA, learning_rate
from train.stages import STAGES

CONFIG = dict(
    stage="classifier",          # coarse_sn | mask_cn | enhanced_sn | classifier
    data_dir=os.environ.get("DATA_DIR", "../shared/data"),
    sources="ham10000,isic2017",  # datasets to train on (each source's val split is validated separately): any of
                                 # ham10000, isic2017, acral
    leave_out="",                # acquisition sources (core.data.acquisition, acral contributors included, e.g.
                                 # acral_imperial) left out of training and validation: a clinic the run never sees,
                                 # for choosing recipes held out (train.compare_recipes)
    split_file="",               # a train.splits CSV; empty = the deterministic default split (split_seed)
    split_seed=42,
    out_dir="",                  # default runs/<stage>
    # model
    backbone="efficientnet_lite0",
    pretrained="package",        # package | hub | none
    init="",                     # start from these weights (enhanced_sn: defaults to --coarse-sn)
    coarse_sn="",                # best.safetensors of coarse-SN (mask_cn validation, enhanced_sn)
    mask_cn="",                  # best.safetensors of mask-CN (enhanced_sn)
    image_size="",               # HxW; default 150x200 for classifiers, 192x256 for segmenters
    colour_constancy=True,       # Shades of Gray (p=6) on every input
    crop_field_of_view=True,     # crop a dermatoscope's dark surround before resizing
    jpeg_quality=75,             # classifiers: re-encode each resized input as JPEG (core.imaging.preprocess; 0 = off)
    freeze_blocks=0,             # freeze stem + first N stages (0 = train everything)
    zero_localisation=False,     # enhanced_sn control: feed all-zero localisation maps
    # optimisation
    epochs=30,
    batch_size=32,
    lr=1e-3,
    weight_decay=1e-2,
    schedule="cosine",           # cosine | poly | constant (after the warmup)
    warmup_epochs=1.0,
    min_lr_ratio=0.01,
    poly_power=0.9,
    ema=0.999,                   # EMA decay of the weights (0 = off); validated and saved when on
    patience=0,                  # early stopping after N epochs without improvement (0 = run the whole schedule)
    # losses and sampling
    class_weight_power=0.5,      # CE weights = inverse class frequency ** power
    label_smoothing=0.05,
    source_repeats="isic2017=2,acral=2",  # times a source's images appear per epoch (the rest: once); the small
                                 # sources count more, so that no clinic's look is drowned by HAM10000's
    rank_lambda=0.05, rank_k=30, rank_margin=0.3,
    # augmentation
    crop_scale_min=0.5,
    crop_scale_max=1.0,          # > 1 adds zoom-out: lesions shown smaller in the frame than in the data (segmenters)
    rotate_degrees=30.0, colour_jitter=0.2, hue_jitter=0.04, lowres_p=0.2, cutout_p=0.5,
    cutmix_p=0.0,                # classifiers: share of images given another image's box (CutMix), labels mixed by area
    dermatoscope_p=0.0,          # share of images given a dermatoscope artefact each (vignette, colour temperature,
                                 # defocus, gamma, hairs, ink marks: train.augment.dermatoscope_artefacts)
    # runtime
    seed=42,
    device="auto",               # auto | cpu | cuda
    amp="auto",                  # auto (bf16 on CUDA; on a CPU with bf16 hardware for the stages where it pays) | none | bf16 | fp16
    threads=0,                   # torch threads (0 = torch's default)
    max_minutes=0.0,             # save and stop cleanly after this many minutes (resume with --resume true)
    max_train_batches=0,         # >0: cut each epoch short (tests, smoke runs)
    max_train_images=0,          # >0: train on a random subset (tests, smoke runs)
    max_val_images=0,            # >0: validate on a random subset per source (tests)
    resume=False,
    use_cache=True,
)


def parse_args(argv=None) -> dict:
    """CONFIG, then a preset's [train] table (--config train/presets/NAME.toml), then the command line's flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="a preset TOML with a [train] table")
    for key, default in CONFIG.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, type=lambda v: v.lower() in ("1", "true", "yes"), default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    preset_path = parser.parse_known_args(argv)[0].config
    if preset_path is not None:
        preset = tomllib.loads(preset_path.read_text()).get("train", {})
        unknown = set(preset) - set(CONFIG)
        if unknown:
            parser.error(f"{preset_path}: unknown [train] keys {sorted(unknown)}")
        parser.set_defaults(**preset)
    cfg = vars(parser.parse_args(argv))
    cfg.pop("config")
    if cfg["stage"] not in STAGES:
        parser.error(f"--stage must be one of {', '.join(STAGES)}")
    cfg["out_dir"] = cfg["out_dir"] or f"runs/{cfg['stage']}"
    cfg["pretrained"] = None if cfg["pretrained"] == "none" else cfg["pretrained"]
    return cfg


# ---------------------------------------------------------------- runtime
@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(cfg: dict) -> Runtime:
    wanted = cfg["device"]
    device = torch.device("cuda" if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()) else "cpu")
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        return Runtime(rank, world, device)
    return Runtime(device=device)


def resolve_amp(cfg: dict, device: torch.device, stage=None) -> str:
    """The autocast a run uses. `auto`: bf16 on CUDA; on a CPU with bf16 hardware (AMX or AVX512-BF16:
    core.models.precision.cpu_has_bf16) bf16 for the stages whose class says it pays there (segmenters: dense U-Net
    convolutions; not the depthwise-bound classifiers: `python -m bench.training --amp auto` vs `--amp none`), else
    none."""
    amp = cfg["amp"]
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16"
    return "bf16" if getattr(stage, "cpu_bf16_pays", False) and cpu_has_bf16() else "none"


def autocast_for(cfg: dict, device: torch.device, stage=None, model: torch.nn.Module | None = None):
    """(autocast context, grad scaler) of a run. Under a CPU bf16 autocast the model's depthwise convolutions are
    made to stay float32, where they are faster (train.autocast_policy); in place, before the EMA copy is taken."""
    amp = resolve_amp(cfg, device, stage)
    if amp == "none":
        return nullcontext(), None
    if amp == "bf16" and device.type == "cpu" and model is not None:
        keep_depthwise_in_fp32(model)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    return torch.autocast(device.type, dtype=dtype), scaler


# ---------------------------------------------------------------- data
def split_tables(cfg: dict) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The training rows and, per source, the validation rows of the stage (segmenters: rows with a mask)."""
    sources = tuple(s for s in cfg["sources"].split(",") if s)
    manifest = load_manifest(cfg["data_dir"], sources=tuple(s for s in sources if s in SOURCES) or SOURCES)
    manifest = split_by(manifest, cfg["split_seed"], cfg["split_file"])
    if cfg["leave_out"]:  # after the split, so that every other image keeps the split of the full data
        left_out = acquisition_sources(manifest, cfg["data_dir"], acral_contributors=True)
        unknown = set(cfg["leave_out"].split(",")) - set(left_out)
        if unknown:
            raise SystemExit(f"--leave-out {sorted(unknown)}: no such acquisition source among the training data's "
                             f"({', '.join(sorted(set(left_out)))})")
        manifest = manifest[~left_out.isin(cfg["leave_out"].split(","))]
    if cfg["stage"] in ("coarse_sn", "enhanced_sn"):
        manifest = manifest[manifest["mask_path"] != ""]
    train = manifest[manifest["split"] == "train"].reset_index(drop=True)
    if cfg["max_train_images"]:
        train = train.sample(n=min(cfg["max_train_images"], len(train)), random_state=cfg["seed"]).reset_index(drop=True)
    val = {}
    for source, part in manifest[manifest["split"] == "val"].groupby("source", sort=True):
        if cfg["max_val_images"]:
            part = part.sample(n=min(cfg["max_val_images"], len(part)), random_state=cfg["seed"])
        val[source] = part.reset_index(drop=True)
    return train, val


def epoch_order(repeats: np.ndarray, epoch: int, seed: int) -> np.ndarray:
    """The image indices of one epoch (each repeated `repeats` times), shuffled by (seed, epoch) alone."""
    indices = np.repeat(np.arange(len(repeats)), repeats)
    return np.random.default_rng([seed, epoch]).permutation(indices)


# ---------------------------------------------------------------- freezing
def timm_backbone(model: torch.nn.Module) -> torch.nn.Module:
    return model.net if hasattr(model, "net") else model.unet.encoder.model


def frozen_modules(model: torch.nn.Module, n_blocks: int) -> list[torch.nn.Module]:
    if n_blocks <= 0:
        return []
    backbone = timm_backbone(model)
    return [backbone.conv_stem, backbone.bn1] + list(backbone.blocks[:n_blocks])


def set_train_mode(model: torch.nn.Module, n_frozen_blocks: int) -> None:
    model.train()
    for module in frozen_modules(model, n_frozen_blocks):
        module.eval()  # frozen BN keeps its ImageNet statistics


def build_model(cfg: dict, stage) -> torch.nn.Module:
    model = stage.build_model()
    if cfg["init"] and cfg["stage"] != "enhanced_sn":  # a resumed run then loads its checkpoint over these weights
        from safetensors.torch import load_file

        model.load_state_dict({k: v.float() for k, v in load_file(cfg["init"]).items()})
    for module in frozen_modules(model, cfg["freeze_blocks"]):
        module.requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


# ---------------------------------------------------------------- the loop
def main(argv=None) -> dict:
    cfg = parse_args(argv)
    rt = setup_runtime(cfg)
    torch.manual_seed(cfg["seed"])
    out_dir = Path(cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / "last_state.pt"

    stage = STAGES[cfg["stage"]](cfg).to(rt.device)
    train_table, val_tables = split_tables(cfg)
    train = stage.load(train_table, training=True)
    stage.prepare(train)
    val = {source: stage.load(table, training=False) for source, table in val_tables.items()}

    model = build_model(cfg, stage).to(rt.device)
    autocast, scaler = autocast_for(cfg, rt.device, stage, model)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if rt.world > 1 else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"],
                                  weight_decay=cfg["weight_decay"])
    ema = EMA(model, cfg["ema"]) if cfg["ema"] > 0 else None
    repeats = train.repeats if train.repeats is not None else np.ones(len(train), int)
    batch = cfg["batch_size"]
    n_batches = int(repeats.sum()) // (batch * rt.world)
    if cfg["max_train_batches"]:
        n_batches = min(n_batches, cfg["max_train_batches"])
    total_steps, warmup_steps = n_batches * cfg["epochs"], round(cfg["warmup_epochs"] * n_batches)
    generator = torch.Generator().manual_seed(cfg["seed"] * 1000 + rt.rank)

    run = {"step": 0, "epoch": 0, "batch": 0, "losses": [], "history": [], "best": -math.inf, "stale": 0,
           "train_seconds": 0.0}
    if cfg["resume"] and state_path.is_file():
        saved = load_state(state_path)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        restore_rng(saved["rng"], generator)
        run = json.loads(saved["run"])
        if rt.main:
            print(f"resumed {state_path}: epoch {run['epoch'] + 1}, batch {run['batch']}, step {run['step']}", flush=True)

    def checkpoint() -> None:
        if rt.main:
            save_state(state_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "ema": None if ema is None else ema.state_dict(), "rng": rng_state(generator),
                                    "run": json.dumps(run)})

    started = time.time()
    steps_done, stopped_early = 0, False  # every piece makes progress, however small --max-minutes is
    for epoch in range(run["epoch"], cfg["epochs"]):
        order = epoch_order(repeats, epoch, cfg["seed"])[rt.rank::rt.world]
        set_train_mode(model, cfg["freeze_blocks"])
        bar = tqdm(total=n_batches * batch * rt.world, initial=run["batch"] * batch * rt.world, unit="img",
                   desc=f"{cfg['stage']} {epoch + 1}/{cfg['epochs']}", disable=not rt.main, smoothing=0.1)
        piece_start = time.time()
        for b in range(run["batch"], n_batches):
            if cfg["max_minutes"] and steps_done and out_of_time(started, cfg["max_minutes"], rt):
                run["train_seconds"] += time.time() - piece_start
                checkpoint()
                bar.close()
                print(f"--max-minutes reached: saved {state_path} at epoch {epoch + 1}, batch {b}; "
                      "continue with --resume true", flush=True)
                return {"best": run["best"], "history": run["history"], "out_dir": str(out_dir), "finished": False}
            lr = learning_rate(run["step"], total_steps, cfg["lr"], warmup_steps, cfg["schedule"], cfg["min_lr_ratio"],
                               cfg["poly_power"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = np.sort(order[b * batch:(b + 1) * batch])
            inputs, target = stage.batch(train, idx, generator)
            with autocast:
                output = ddp_model(*inputs)
            loss = stage.loss(output, target)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if ema is not None:
                ema.update(model)
            run["step"] += 1
            steps_done += 1
            run["batch"] = b + 1
            run["losses"].append(round(loss.item(), 5))
            bar.update(batch * rt.world)
            bar.set_postfix(loss=f"{np.mean(run['losses'][-20:]):.4f}", lr=f"{lr:.2e}")
        bar.close()
        run["train_seconds"] += time.time() - piece_start

        val_start = time.time()
        metrics = stage.validate(ema.module if ema is not None else model, val) if rt.main and val else {"score": 0.0}
        record = {"epoch": epoch + 1, "steps": len(run["losses"]), "train_loss": round(float(np.mean(run["losses"])), 5),
                  "lr": learning_rate(run["step"] - 1, total_steps, cfg["lr"], warmup_steps, cfg["schedule"],
                                      cfg["min_lr_ratio"], cfg["poly_power"]),
                  **metrics, "val_metric": metrics["score"], "train_seconds": round(run["train_seconds"], 1),
                  "val_seconds": round(time.time() - val_start, 1),
                  "images_per_second": round(len(run["losses"]) * batch * rt.world / max(run["train_seconds"], 1e-9), 1)}
        record["seconds"] = round(record["train_seconds"] + record["val_seconds"], 1)
        run["history"].append(record)
        run.update(epoch=epoch + 1, batch=0, losses=[], train_seconds=0.0)
        if rt.main:
            print(json.dumps(record), flush=True)
            if metrics["score"] > run["best"]:
                run["best"], run["stale"] = metrics["score"], 0
                save_weights(ema.module if ema is not None else model, out_dir / "best.safetensors", half=False,
                             metadata={**stage.metadata(), "epoch": str(epoch + 1), "score": str(metrics["score"])})
            else:
                run["stale"] += 1
            checkpoint()
            (out_dir / "history.json").write_text(json.dumps({"config": cfg, "history": run["history"],
                                                              "best": run["best"]}, indent=1))
        if rt.world > 1:  # NCCL broadcasts device tensors only
            flags = torch.tensor([run["stale"]], dtype=torch.float32, device=rt.device)
            dist.broadcast(flags, 0)
            run["stale"] = int(flags.item())
        if cfg["patience"] and run["stale"] >= cfg["patience"]:
            stopped_early = True
            break
    if rt.world > 1:
        for buffer in model.buffers():  # DDP broadcasts rank 0's BN statistics before each forward; once more after the last
            dist.broadcast(buffer, 0)
        save_weights(model, out_dir / f"final_rank{rt.rank}.safetensors", half=False)
        dist.barrier()
        dist.destroy_process_group()
    return {"best": run["best"], "history": run["history"], "out_dir": str(out_dir), "finished": True,
            "stopped_early": stopped_early}


def out_of_time(started: float, max_minutes: float, rt: Runtime) -> bool:
    """--max-minutes reached, by rank 0's clock for every rank: ranks that decided on their own clocks could stop at
    different batches, and the ones still training would wait forever in their next collective."""
    late = (time.time() - started) / 60 >= max_minutes
    if rt.world == 1:
        return late
    decision = torch.tensor([float(late)], device=rt.device)
    dist.broadcast(decision, 0)
    return bool(decision.item())


if __name__ == "__main__":
    main()
