"""Shared helpers: data, the Analyzer as shipped, statistics, memory and machine facts."""
from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """DATA_DIR (default ../shared/data relative to the repo root)."""
    value = os.environ.get("DATA_DIR", "").strip() or "../shared/data"
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = path if path.exists() else REPO / path
    return path.resolve()


def fullres_images(root: Path, n: int) -> list[tuple[str, bytes]]:
    """The first n (name, file bytes) of ham10000/fullres/images (600x450 JPEGs), sorted by name."""
    folder = root / "ham10000" / "fullres" / "images"
    paths = sorted(folder.glob("*.jpg"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no .jpg images (set DATA_DIR to the shared data folder)")
    paths = [paths[i % len(paths)] for i in range(n)]
    return [(p.name, p.read_bytes()) for p in paths]


def small_images(root: Path, n: int, size: tuple[int, int], preprocessing) -> np.ndarray:
    """(n, H, W, 3) uint8: the first n ham10000/images (200x150) as network inputs of size (H, W)."""
    from core.imaging.preprocess import network_image

    paths = sorted((root / "ham10000" / "images").glob("*.jpg"))[:n]
    if len(paths) < n:
        raise FileNotFoundError(f"need {n} images in {root / 'ham10000' / 'images'}")
    return np.stack([network_image(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), size, preprocessing) for p in paths])


def load_analyzer(weights_dir: Path, module=None, pack: bool = True):
    """(Analyzer, note): Analyzer.load as shipped (pack: see Analyzer.__init__). Without a complete model card the app
    refuses to start, so there is nothing to time either.
    `module`: an alternative core.analysis.inference module (bench.experiments.ab_patch loads a patched copy)."""
    if module is None:
        import core.analysis.inference as module
    analyzer = module.Analyzer.load(weights_dir, device="cpu", pack=pack)
    return analyzer, f"Analyzer.load (verified, model card version {analyzer.version})"


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def summary(values) -> dict:
    """p50 / p95 / mean / min in milliseconds from seconds."""
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "mean_ms": float(statistics.fmean(ms)) if ms else float("nan"), "min_ms": float(min(ms)) if ms else float("nan")}


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# ---------------------------------------------------------------- memory
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux: write 5 to /proc/self/clear_refs). False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak resident memory growth of this process over a block, in MiB.

    Linux: VmHWM after resetting it at the start (exact peak of the block) minus VmRSS at the start.
    Elsewhere: ru_maxrss delta (only shows growth beyond the process's earlier peak)."""

    def __enter__(self):
        self.reset = reset_peak_rss()
        self.rss0 = _status_kb("VmRSS")
        self.maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        hwm = _status_kb("VmHWM")
        if self.reset and hwm is not None and self.rss0 is not None:
            self.delta_mib, self.method = (hwm - self.rss0) / 1024, "VmHWM-after-clear_refs minus VmRSS-before"
            self.peak_mib = hwm / 1024
        else:
            self.delta_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.maxrss0) / 1024
            self.peak_mib, self.method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss delta"
        return False


def machine() -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from core.models.cpu_support import describe

    return {"cpu": cpu, "cpu_isa": describe(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "nice": os.nice(0),
            "loadavg": [round(x, 2) for x in load], "cuda": torch.cuda.is_available()}

