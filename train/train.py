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
from train.stages import STAGES, Arrays, Stage

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


# ---------------------------------------------------------------- one run
@dataclass(frozen=True)
class Training:
    """What one run trains with: its stage and data, the model with its optimiser, autocast and EMA, the schedule's
    length and the random stream of the augmentations. Built once; the loop's progress lives in the run dict (what
    last_state.pt saves)."""
    cfg: dict
    rt: Runtime
    stage: Stage
    train: Arrays
    val: dict[str, Arrays]
    model: torch.nn.Module
    ddp_model: torch.nn.Module   # the model itself, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    autocast: object
    scaler: torch.amp.GradScaler | None
    repeats: np.ndarray          # times each training image appears per epoch
    n_batches: int               # per epoch and rank
    generator: torch.Generator
    out_dir: Path

    @property
    def state_path(self) -> Path:
        return self.out_dir / "last_state.pt"

    @property
    def kept_model(self) -> torch.nn.Module:
        """The weights validated and saved: the EMA's when it is on."""
        return self.ema.module if self.ema is not None else self.model

    def lr_at(self, step: int) -> float:
        """The schedule's learning rate at optimiser step `step` (train.schedule)."""
        cfg, per_epoch = self.cfg, self.n_batches
        return learning_rate(step, per_epoch * cfg["epochs"], cfg["lr"], round(cfg["warmup_epochs"] * per_epoch),
                             cfg["schedule"], cfg["min_lr_ratio"], cfg["poly_power"])


def prepare_training(cfg: dict, rt: Runtime) -> Training:
    """The stage with its training and validation data, the model, optimiser, autocast and EMA of a run."""
    torch.manual_seed(cfg["seed"])
    out_dir = Path(cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
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
    n_batches = int(repeats.sum()) // (cfg["batch_size"] * rt.world)
    if cfg["max_train_batches"]:
        n_batches = min(n_batches, cfg["max_train_batches"])
    generator = torch.Generator().manual_seed(cfg["seed"] * 1000 + rt.rank)
    return Training(cfg, rt, stage, train, val, model, ddp_model, optimizer, ema, autocast, scaler, repeats, n_batches,
                    generator, out_dir)


def new_run() -> dict:
    """The progress of a run that has not started: what last_state.pt saves besides the weights and RNG streams."""
    return {"step": 0, "epoch": 0, "batch": 0, "losses": [], "history": [], "best": -math.inf, "stale": 0,
            "train_seconds": 0.0}


def resume_run(t: Training) -> dict:
    """Restore weights, optimiser, EMA and RNG streams from last_state.pt; the run's progress."""
    saved = load_state(t.state_path)
    t.model.load_state_dict(saved["model"])
    t.optimizer.load_state_dict(saved["optimizer"])
    if t.ema is not None:
        t.ema.load_state_dict(saved["ema"])
    restore_rng(saved["rng"], t.generator)
    run = json.loads(saved["run"])
    if t.rt.main:
        print(f"resumed {t.state_path}: epoch {run['epoch'] + 1}, batch {run['batch']}, step {run['step']}", flush=True)
    return run


def save_checkpoint(t: Training, run: dict) -> None:
    if t.rt.main:
        save_state(t.state_path, {"model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
                                  "ema": None if t.ema is None else t.ema.state_dict(), "rng": rng_state(t.generator),
                                  "run": json.dumps(run)})


def train_step(t: Training, run: dict, idx: np.ndarray) -> tuple[float, float]:
    """One optimiser step on the training images idx at the schedule's learning rate; (loss, learning rate)."""
    lr = t.lr_at(run["step"])
    for group in t.optimizer.param_groups:
        group["lr"] = lr
    inputs, target = t.stage.batch(t.train, idx, t.generator)
    with t.autocast:
        output = t.ddp_model(*inputs)
    loss = t.stage.loss(output, target)
    t.optimizer.zero_grad(set_to_none=True)
    if t.scaler is not None:
        t.scaler.scale(loss).backward()
        t.scaler.step(t.optimizer)
        t.scaler.update()
    else:
        loss.backward()
        t.optimizer.step()
    if t.ema is not None:
        t.ema.update(t.model)
    run["step"] += 1
    return loss.item(), lr


def train_epoch(t: Training, run: dict, epoch: int, started: float, steps_done: int) -> tuple[int, bool]:
    """The epoch's batches from run["batch"] on; (steps this process has made, whether the epoch finished: False when
    --max-minutes stopped it, the state saved to resume at the next batch)."""
    cfg, rt, batch = t.cfg, t.rt, t.cfg["batch_size"]
    order = epoch_order(t.repeats, epoch, cfg["seed"])[rt.rank::rt.world]
    set_train_mode(t.model, cfg["freeze_blocks"])
    bar = tqdm(total=t.n_batches * batch * rt.world, initial=run["batch"] * batch * rt.world, unit="img",
               desc=f"{cfg['stage']} {epoch + 1}/{cfg['epochs']}", disable=not rt.main, smoothing=0.1)
    piece_start = time.time()
    for b in range(run["batch"], t.n_batches):
        if cfg["max_minutes"] and steps_done and out_of_time(started, cfg["max_minutes"], rt):
            run["train_seconds"] += time.time() - piece_start
            save_checkpoint(t, run)
            bar.close()
            print(f"--max-minutes reached: saved {t.state_path} at epoch {epoch + 1}, batch {b}; "
                  "continue with --resume true", flush=True)
            return steps_done, False
        loss, lr = train_step(t, run, np.sort(order[b * batch:(b + 1) * batch]))
        steps_done += 1
        run["batch"] = b + 1
        run["losses"].append(round(loss, 5))
        bar.update(batch * rt.world)
        bar.set_postfix(loss=f"{np.mean(run['losses'][-20:]):.4f}", lr=f"{lr:.2e}")
    bar.close()
    run["train_seconds"] += time.time() - piece_start
    return steps_done, True


def epoch_record(t: Training, run: dict, epoch: int, metrics: dict, val_seconds: float) -> dict:
    """The line of history.json for a finished epoch."""
    images = len(run["losses"]) * t.cfg["batch_size"] * t.rt.world
    record = {"epoch": epoch + 1, "steps": len(run["losses"]), "train_loss": round(float(np.mean(run["losses"])), 5),
              "lr": t.lr_at(run["step"] - 1), **metrics, "val_metric": metrics["score"],
              "train_seconds": round(run["train_seconds"], 1), "val_seconds": round(val_seconds, 1),
              "images_per_second": round(images / max(run["train_seconds"], 1e-9), 1)}
    record["seconds"] = round(record["train_seconds"] + record["val_seconds"], 1)
    return record


def keep_if_best(t: Training, run: dict, epoch: int, score: float) -> None:
    """best.safetensors holds the epoch with the highest validation score; "stale" counts the epochs since."""
    if score > run["best"]:
        run["best"], run["stale"] = score, 0
        save_weights(t.kept_model, t.out_dir / "best.safetensors", half=False,
                     metadata={**t.stage.metadata(), "epoch": str(epoch + 1), "score": str(score)})
    else:
        run["stale"] += 1


def end_epoch(t: Training, run: dict, epoch: int) -> None:
    """Validate (rank 0), record the epoch, keep the best weights, save the state and history.json; every rank then
    holds rank 0's count of epochs without improvement, so that all stop early together."""
    val_start = time.time()
    metrics = t.stage.validate(t.kept_model, t.val) if t.rt.main and t.val else {"score": 0.0}
    record = epoch_record(t, run, epoch, metrics, time.time() - val_start)
    run["history"].append(record)
    run.update(epoch=epoch + 1, batch=0, losses=[], train_seconds=0.0)
    if t.rt.main:
        print(json.dumps(record), flush=True)
        keep_if_best(t, run, epoch, metrics["score"])
        save_checkpoint(t, run)
        (t.out_dir / "history.json").write_text(json.dumps({"config": t.cfg, "history": run["history"],
                                                            "best": run["best"]}, indent=1))
    if t.rt.world > 1:  # NCCL broadcasts device tensors only
        flags = torch.tensor([run["stale"]], dtype=torch.float32, device=t.rt.device)
        dist.broadcast(flags, 0)
        run["stale"] = int(flags.item())


def finish_distributed(t: Training) -> None:
    """Every rank ends with rank 0's BN statistics (DDP broadcasts them before each forward; once more after the last),
    saves its final weights and leaves the process group."""
    for buffer in t.model.buffers():
        dist.broadcast(buffer, 0)
    save_weights(t.model, t.out_dir / f"final_rank{t.rt.rank}.safetensors", half=False)
    dist.barrier()
    dist.destroy_process_group()


def outcome(t: Training, run: dict, **flags) -> dict:
    """What main returns: the best score, the history, the run's folder, whether it finished (and stopped early)."""
    return {"best": run["best"], "history": run["history"], "out_dir": str(t.out_dir), **flags}


# ---------------------------------------------------------------- the loop
def main(argv=None) -> dict:
    cfg = parse_args(argv)
    rt = setup_runtime(cfg)
    t = prepare_training(cfg, rt)
    run = resume_run(t) if cfg["resume"] and t.state_path.is_file() else new_run()
    started = time.time()
    steps_done, stopped_early = 0, False  # every piece makes progress, however small --max-minutes is
    for epoch in range(run["epoch"], cfg["epochs"]):
        steps_done, finished = train_epoch(t, run, epoch, started, steps_done)
        if not finished:
            return outcome(t, run, finished=False)
        end_epoch(t, run, epoch)
        if cfg["patience"] and run["stale"] >= cfg["patience"]:
            stopped_early = True
            break
    if rt.world > 1:
        finish_distributed(t)
    return outcome(t, run, finished=True, stopped_early=stopped_early)


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
