"""Archive-scale batch analysis: one engine, a local back-end and a Ray Data back-end.

    bash run.sh batch INPUT --out OUT [--ray ADDRESS|auto] [--workers N] [--labels CSV] [--shard-size N]

INPUT: a folder (every image file under it, sorted; the formats of core.io.intake) or a CSV / Parquet list of image
paths (column `path`, else the first column; relative paths are relative to the list's folder). Every image goes
through the app's Analyzer (same weights, rules, OOD and dermoscopy check) in core.batch.batch_shards.analyse_shard, the one
function both back-ends run, so they write identical rows. OUT gets:

- `manifest.json`: the plan (model version and fingerprint, shard size, each shard's key and image count);
- `shards/shard-<key>.parquet`: one row per image (core.batch.batch_shards lists the columns);
- `summary.json` (also printed): class distribution, referral / refused / error counts, time and images/s of this
  run, per-worker memory, and the evaluation figures when --labels is given (then copied to OUT/labels.csv, where the
  Batch and Evaluate pages find it).

Back-ends: local (default) = one process per worker (--workers, default one per core), each with its own Analyzer
and one torch thread, progress with tqdm (images/s, ETA, errors so far). `--ray ADDRESS` (or `auto`: the cluster
`ray start` made on this machine) = Ray Data: a dataset of shards -> map_batches with an Analyzer actor per worker
(an actor pool of --workers, default every CPU of the cluster) -> each actor writes its shards; Ray shows its own
progress. The workers read the images and the weights at the same paths as the driver (a shared volume on a cluster).

Resume: shards whose file exists are skipped, so a killed run restarts where it stopped and a finished run does
nothing; a corrupt or hostile file is one error row, never a failed job.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

from core.batch.batch_results import LABELS, MANIFEST, LabelsError, evaluation_of, read_labels, read_result
from core.batch.batch_shards import (Shard, ShardReport, analyse_shard, file_sha256, model_fingerprint, plan_shards,
                                     remove_temporaries, shard_path)
from core.io.weights_io import DEFAULT_WEIGHTS_DIR
from core.analysis.predict import IMAGE_SUFFIXES

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SHARD_SIZE = 128
# Ray workers import core/ from the repository at the driver's path (a shared volume or the same image on a cluster).
RAY_RUNTIME_ENV = {"env_vars": {"PYTHONPATH": str(REPO)}}
SUMMARY = "summary.json"


class BatchInputError(ValueError):
    """The input cannot be listed (missing, empty, a list without paths); the message says which and why."""


# ---------------------------------------------------------------- input and plan
def list_images(input_path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(source names, paths) of a folder's image files (recursive, sorted) or of a CSV / Parquet list of paths."""
    root = Path(input_path)
    if root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return [p.relative_to(root).as_posix() for p in paths], [str(p.resolve()) for p in paths]
    if not root.is_file():
        raise BatchInputError(f"{root}: no such folder or file")
    import pandas as pd

    try:
        table = pd.read_parquet(root) if root.suffix.lower() == ".parquet" else pd.read_csv(root, dtype=str)
    except Exception as exc:  # noqa: BLE001 - pandas / pyarrow raise many kinds for a bad list
        raise BatchInputError(f"{root}: not a readable CSV / Parquet list ({exc})") from None
    if table.empty or not len(table.columns):
        raise BatchInputError(f"{root}: the list has no rows")
    column = "path" if "path" in table.columns else table.columns[0]
    listed = [str(v) for v in table[column].dropna()]
    return listed, [str(p if p.is_absolute() else (root.parent / p).resolve()) for p in map(Path, listed)]


def plan(input_path, weights_dir, shard_size: int, hash_threads: int = 8) -> tuple[list[Shard], dict]:
    """The shards of the input under these weights, and the manifest that records them."""
    from core.decisions.model_card import load_card

    sources, paths = list_images(input_path)
    if not sources:
        raise BatchInputError(f"{input_path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    with ThreadPoolExecutor(hash_threads) as pool:  # hashlib releases the GIL: reading and hashing overlap
        hashes = list(pool.map(file_sha256, paths))
    fingerprint = model_fingerprint(weights_dir)
    shards = plan_shards(sources, paths, hashes, fingerprint, shard_size)
    manifest = {"input": str(input_path), "model_version": load_card(weights_dir).model_version,
                "model_fingerprint": fingerprint, "shard_size": shard_size, "n_images": len(sources),
                "shards": [{"file": s.file_name, "n_images": len(s.sources)} for s in shards]}
    return shards, manifest


# ---------------------------------------------------------------- local back-end
_worker_analyzer = None


def _init_worker(weights_dir: str) -> None:
    global _worker_analyzer
    import torch

    from core.analysis.inference import Analyzer

    torch.set_num_threads(1)
    _worker_analyzer = Analyzer.load(weights_dir, device="cpu")


def _run_shard(shard_json: str, out_dir: str) -> ShardReport:
    return analyse_shard(_worker_analyzer, Shard.from_json(shard_json), out_dir)


def run_local(shards: list[Shard], out_dir: Path, weights_dir, workers: int) -> list[ShardReport]:
    """One process per worker, each with its own Analyzer; a tqdm bar with images/s, ETA and errors so far."""
    from tqdm import tqdm

    reports: list[ShardReport] = []
    bar = tqdm(total=sum(len(s.sources) for s in shards), desc="analysing", unit="image", file=sys.stderr)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(str(weights_dir),)) as pool:
        futures = [pool.submit(_run_shard, s.to_json(), str(out_dir)) for s in shards]
        for future in as_completed(futures):
            reports.append(future.result())
            bar.update(reports[-1].n_files)
            bar.set_postfix(errors=sum(r.n_errors for r in reports))
    bar.close()
    return reports


# ---------------------------------------------------------------- Ray Data back-end
class ShardActor:
    """Ray Data's callable class: one Analyzer per actor, one shard per call (core.batch.batch_shards.analyse_shard)."""

    def __init__(self, weights_dir: str, out_dir: str):
        _init_worker(weights_dir)
        self.out_dir = out_dir

    def __call__(self, batch: dict) -> dict:
        reports = [asdict(_run_shard(text, self.out_dir)) for text in batch["shard"]]
        return {key: [r[key] for r in reports] for key in ShardReport.__dataclass_fields__}


def run_ray(shards: list[Shard], out_dir: Path, weights_dir, address: str, workers: int | None) -> list[ShardReport]:
    """The same shards on Ray Data: from_items -> map_batches(ShardActor, actor pool) (Ray's progress bars)."""
    import ray

    if not ray.is_initialized():  # a caller (the tests, the bench) may have connected already
        try:
            ray.init(address=address, runtime_env=RAY_RUNTIME_ENV, log_to_driver=False)
        except ConnectionError as exc:
            raise BatchInputError(f"no Ray cluster at {address!r} ({exc}); start one with `ray start --head`") from None
    size = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    dataset = ray.data.from_items([{"shard": s.to_json()} for s in shards], override_num_blocks=len(shards))
    results = dataset.map_batches(ShardActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=size), num_cpus=1,
                                  fn_constructor_kwargs={"weights_dir": str(weights_dir), "out_dir": str(out_dir)})
    return [ShardReport(**{k: row[k] for k in ShardReport.__dataclass_fields__}) for row in results.take_all()]


# ---------------------------------------------------------------- the run
def run(input_path, out_dir, weights_dir=DEFAULT_WEIGHTS_DIR, ray_address: str | None = None,
        workers: int | None = None, labels: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE) -> dict:
    """Plan, analyse the shards not written yet, summarise; the summary (also written to OUT/summary.json)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    label_table = read_labels(labels) if labels else None  # a bad labels file fails before any analysis
    shards, manifest = plan(input_path, weights_dir, shard_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out_dir)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if label_table is not None:
        shutil.copyfile(labels, out_dir / LABELS)
    todo = [s for s in shards if not shard_path(out_dir, s).exists()]
    backend = "local" if ray_address is None else f"ray ({ray_address})"
    workers = workers or (None if ray_address else os.cpu_count() or 1)
    print(f"[batch] {manifest['n_images']} images in {len(shards)} shards; {len(shards) - len(todo)} already written, "
          f"{len(todo)} to analyse on {backend}", file=sys.stderr)
    reports = []
    if todo:
        reports = (run_local(todo, out_dir, weights_dir, min(workers, len(todo))) if ray_address is None
                   else run_ray(todo, out_dir, weights_dir, ray_address, workers))
    summary = summarise_run(out_dir, manifest, reports, time.perf_counter() - start, backend, len(shards) - len(todo))
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary


def summarise_run(out_dir: Path, manifest: dict, reports: list[ShardReport], seconds: float, backend: str,
                  skipped: int) -> dict:
    from core.decisions.ood_levels import REFUSED_LEVELS

    table = read_result(out_dir)
    analysed = sum(r.n_images for r in reports)
    workers = {}
    for r in reports:
        w = workers.setdefault(str(r.pid), {"shards": 0, "images": 0, "busy_s": 0.0, "rss_mib_first": r.rss_mib})
        w.update(shards=w["shards"] + 1, images=w["images"] + r.n_images, busy_s=round(w["busy_s"] + r.seconds, 3),
                 rss_mib_last=r.rss_mib, peak_rss_mib=max(w.get("peak_rss_mib", 0.0), r.peak_rss_mib))
    summary = {
        "backend": backend, "model_version": manifest["model_version"], "n_images": int(len(table)),
        "class_distribution": dict(Counter(p for p in table["pred"] if p)),
        "referred": int((table["refer"] == "yes").sum()),
        "refused": int(table["ood_level"].isin(REFUSED_LEVELS).sum()),
        "errors": int((table["error"] != "").sum()),
        "shards": len(manifest["shards"]), "shards_skipped": skipped, "images_analysed_now": analysed,
        "seconds": round(seconds, 2), "images_per_s": round(analysed / seconds, 3) if analysed else None,
        "workers": workers}
    if (out_dir / LABELS).exists():
        summary["evaluation"] = evaluation_of(table, out_dir / LABELS).summary
    return summary


def summary_text(summary: dict) -> str:
    classes = ", ".join(f"{c} {n}" for c, n in sorted(summary["class_distribution"].items(), key=lambda kv: -kv[1]))
    rate = f"{summary['images_per_s']:.2f} images/s" if summary["images_per_s"] else "nothing to analyse"
    lines = [f"{summary['n_images']} images ({summary['images_analysed_now']} analysed now, "
             f"{summary['shards_skipped']} of {summary['shards']} shards already written) on {summary['backend']}",
             f"classes: {classes or '-'}", f"referred {summary['referred']} · refused (not dermoscopy) "
             f"{summary['refused']} · errors {summary['errors']}", f"time {summary['seconds']:.1f} s · {rate}"]
    cls = (summary.get("evaluation") or {}).get("classification")
    if cls:
        lines.append(f"with labels: balanced accuracy {cls['ci']['balanced_accuracy']['value']:.3f}, "
                     f"macro AUC {cls['ci']['macro_auc']['value']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="run.sh batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="a folder of images, or a CSV / Parquet list of image paths")
    parser.add_argument("--out", required=True, help="output folder (shards, manifest.json, summary.json)")
    parser.add_argument("--ray", metavar="ADDRESS", default=None, help="run on Ray Data at this address ('auto': the "
                        "cluster started on this machine)")
    parser.add_argument("--workers", type=int, default=None, help="Analyzers in parallel (default: one per core, or "
                        "every CPU of the Ray cluster)")
    parser.add_argument("--labels", default=None, help="CSV with image (or image_id), dx and optional lesion_id: "
                        "the summary gets the evaluation figures")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="images per Parquet shard")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS_DIR))
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        summary = run(args.input, args.out, args.weights, args.ray, args.workers, args.labels, args.shard_size)
    except (BatchInputError, LabelsError, ValueError) as exc:
        parser.error(str(exc))
    print(summary_text(summary))
    print(f"-> {Path(args.out) / SUMMARY}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
