"""8. Archive batch engine (core.batch.batch_engine): throughput per worker of the local and Ray Data back-ends, the 1 -> 2
worker scaling on a local Ray cluster, and memory over a longer run.

    nice -n 19 .venv/bin/python -m bench.batch_engine [--images 300] [--long 2000] [--shard-size 32]

Input: a CSV list of the first N HAM10000 images of DATA_DIR (ham10000/images; nothing is copied). Every
configuration analyses the same list into a fresh output folder with the full analysis (core.batch.batch_shards):
- `local_1`, `local_2`: the local back-end with 1 and 2 worker processes;
- `ray_inprocess_2`: Ray Data on `ray.init(num_cpus=2)` (an actor pool of 2);
- `ray_cluster_1`, `ray_cluster_2`: a Ray cluster the bench starts with `ray start --head --num-cpus 1 --block`,
  then grows with a second `ray start --address ... --num-cpus 1 --block` node on the same machine; the same command
  runs with `--ray ADDRESS` on 1 and then 2 workers. The bench stops both nodes (their process groups) at the end;
- `local_2_fullres`: the local back-end with 2 workers on the 186 full-resolution 600x450 HAM10000 JPEGs
  (ham10000/fullres; the other configurations use the 200x150 copies): the rate of the 10^6-image estimate;
- `long`: the local back-end with 2 workers on --long images: each worker's resident memory after its first and its
  last shard and its peak (VmHWM).

Figures per configuration: `wall_images_per_s` (images / wall time of the whole command: planning, worker start-up,
model loading and the summary included), `per_worker_images_per_s` (images / seconds the workers spent inside
analyse_shard, averaged over workers: the steady per-core rate). Writes bench/results/batch_engine_<stamp>.json and
prints a table. The 2-core machine is shared with other agents: run it under the CPU lock and read the load averages
recorded with the figures.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, data_dir, machine

RESULTS = Path(__file__).resolve().parent / "results"
RAY = Path(sys.executable).with_name("ray")
OBJECT_STORE = 150 * 2**20
ADDRESS_FILE = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
N_FULLRES = 186  # every 600x450 image of ham10000/fullres


def image_list(root: Path, n: int, folder: Path, subfolder: str = "images") -> Path:
    """A CSV of the first n HAM10000 image paths (sorted) of ham10000/<subfolder>."""
    images = sorted((root / "ham10000" / subfolder).glob("*.jpg"))[:n]
    if len(images) < n:
        raise RuntimeError(f"only {len(images)} images under {root / 'ham10000' / subfolder}")
    path = folder / f"{subfolder.replace('/', '_')}_{n}.csv"
    path.write_text("path\n" + "\n".join(str(p) for p in images) + "\n")
    return path


def figures(summary: dict, seconds: float) -> dict:
    workers = summary["workers"].values()
    rates = [w["images"] / w["busy_s"] for w in workers if w["busy_s"] > 0]
    return {"images": summary["images_analysed_now"], "workers": len(summary["workers"]), "wall_s": round(seconds, 2),
            "wall_images_per_s": round(summary["images_analysed_now"] / seconds, 3),
            "per_worker_images_per_s": round(sum(rates) / len(rates), 3) if rates else None,
            "errors": summary["errors"], "memory_mib": {pid: {k: round(w[k], 1) for k in
                                                            ("rss_mib_first", "rss_mib_last", "peak_rss_mib")}
                                                      for pid, w in summary["workers"].items()}}


def timed_run(images: Path, out: Path, shard_size: int, **kwargs) -> dict:
    from core.batch.batch_engine import run

    start = time.perf_counter()
    summary = run(images, out, shard_size=shard_size, **kwargs)
    return figures(summary, time.perf_counter() - start)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(*args: str) -> subprocess.Popen:
    """`ray start ... --block` in its own process group (stopped with stop_nodes, nothing else on the machine)."""
    ports = ["--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
             "--runtime-env-agent-port", str(_free_port()), "--metrics-export-port", str(_free_port())]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([str(RAY), "start", "--block", "--num-cpus", "1", "--object-store-memory",
                             str(OBJECT_STORE), *ports, *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_nodes(nodes: list[subprocess.Popen]) -> None:
    for node in reversed(nodes):
        try:
            os.killpg(node.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
    time.sleep(2)
    for node in nodes:  # workers a raylet left behind in the group
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # `ray start` records the head's address here; a later plain ray.init() would try to join the stopped cluster
    ADDRESS_FILE.unlink(missing_ok=True)


def _wait_cpus(ray, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while ray.cluster_resources().get("CPU", 0) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray cluster did not reach {n} CPUs")
        time.sleep(1)


def cluster_scaling(images: Path, work: Path, shard_size: int) -> dict:
    import ray

    from core.batch.batch_engine import RAY_RUNTIME_ENV

    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes = [_ray_node("--head", "--port", str(port), "--include-dashboard", "false")]
    out = {}
    try:
        time.sleep(5)
        ray.init(address=address, runtime_env=RAY_RUNTIME_ENV, log_to_driver=False)
        _wait_cpus(ray, 1)
        out["ray_cluster_1"] = timed_run(images, work / "cluster1", shard_size, ray_address=address, workers=1)
        nodes.append(_ray_node("--address", address))
        _wait_cpus(ray, 2)
        out["ray_cluster_2"] = timed_run(images, work / "cluster2", shard_size, ray_address=address, workers=2)
        out["nodes"] = len(ray.nodes())
    finally:
        ray.shutdown()
        stop_nodes(nodes)
    return out


def ray_inprocess(images: Path, out: Path, shard_size: int) -> dict:
    import ray

    from core.batch.batch_engine import RAY_RUNTIME_ENV

    ray.init(address="local", num_cpus=2, object_store_memory=OBJECT_STORE, include_dashboard=False,
             runtime_env=RAY_RUNTIME_ENV, log_to_driver=False)
    try:
        return timed_run(images, out, shard_size, ray_address="local", workers=2)
    finally:
        ray.shutdown()


def bench(n_images: int, n_long: int, shard_size: int, n_fullres: int = N_FULLRES) -> dict:
    root = data_dir()
    results = {"created": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
               "images": n_images, "long_images": n_long, "fullres_images": n_fullres, "shard_size": shard_size}
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        work = Path(tmp)
        images = image_list(root, n_images, work) if n_images else None
        throughput = n_images > 0  # --images 0: the memory run only
        for name, step in (
                ("local_1", lambda: timed_run(images, work / "local1", shard_size, workers=1)),
                ("local_2", lambda: timed_run(images, work / "local2", shard_size, workers=2)),
                ("ray_inprocess_2", lambda: ray_inprocess(images, work / "ray2", shard_size)),
                ("ray_cluster", lambda: cluster_scaling(images, work, shard_size)),
                ("local_2_fullres", lambda: timed_run(image_list(root, n_fullres, work, "fullres/images"),
                                                      work / "fullres", shard_size, workers=2)),
                ("long", lambda: timed_run(image_list(root, n_long, work), work / "long", shard_size, workers=2)
                 if n_long else None)):
            if name != "long" and not throughput:
                continue
            print(f"[bench.batch_engine] {name} ...", file=sys.stderr, flush=True)
            result = step()
            if name == "ray_cluster":
                results.update({k: v for k, v in result.items()})
            elif result is not None:
                results[name] = result
    results["machine_after"] = {"loadavg": machine()["loadavg"]}
    if throughput:
        results["estimate_1e6"] = estimate(results)
    return results


def estimate(results: dict) -> dict:
    """Core-hours for 10^6 images from the measured per-worker rate on full-resolution 600x450 images (the local
    back-end's 2-worker run; archives hold full-resolution dermoscopy)."""
    rate = results["local_2_fullres"]["per_worker_images_per_s"]
    core_hours = 1e6 / rate / 3600
    return {"per_core_images_per_s": rate, "images": "600x450 HAM10000 JPEGs", "core_hours": round(core_hours, 1),
            "hours_on": {str(cores): round(core_hours / cores, 2) for cores in (2, 16, 64, 256)}}


def table(results: dict) -> str:
    lines = [f"batch engine benchmark {results['created']} · {results['machine']['cpu_count']} CPUs · load "
             f"{results['machine']['loadavg']} -> {results['machine_after']['loadavg']} · {results['images']} images,"
             f" shards of {results['shard_size']}",
             f"{'configuration':<18}{'workers':>8}{'wall img/s':>12}{'per-worker img/s':>18}{'wall s':>9}"]
    for name in ("local_1", "local_2", "ray_inprocess_2", "ray_cluster_1", "ray_cluster_2", "local_2_fullres", "long"):
        r = results.get(name)
        if r:
            lines.append(f"{name:<18}{r['workers']:>8}{r['wall_images_per_s']:>12.2f}"
                         f"{r['per_worker_images_per_s']:>18.2f}{r['wall_s']:>9.1f}")
    if results.get("long"):
        for pid, m in results["long"]["memory_mib"].items():
            lines.append(f"long run ({results['long']['images']} images) worker {pid}: RSS after first shard "
                         f"{m['rss_mib_first']:.0f} MiB, after last {m['rss_mib_last']:.0f} MiB, "
                         f"peak {m['peak_rss_mib']:.0f} MiB")
    e = results.get("estimate_1e6")
    if e:
        lines.append(f"10^6 images at {e['per_core_images_per_s']:.2f} images/s per core: "
                     f"{e['core_hours']:.0f} core-hours ("
                     + ", ".join(f"{h:g} h on {c} cores" for c, h in e["hours_on"].items()) + ")")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="images per throughput configuration (0: only the "
                        "memory run)")
    parser.add_argument("--long", type=int, default=2000, help="images of the memory run (0: skip it)")
    parser.add_argument("--fullres", type=int, default=N_FULLRES, help="full-resolution images of the estimate's run")
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    results = bench(args.images, args.long, args.shard_size, args.fullres)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"batch_engine_{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
