"""The Analyzers that serve every session: one replica per CPU core, loaded in a background thread.

Streamlit runs each session's script in its own thread. One shared Analyzer would serve them one at a time (its lock),
so `AnalyzerPool` holds several replicas (default: one per core, each computing with one torch thread) and lends a
free one to each analysis: two sessions analyse on two cores at once. The replicas load in the background, the
first one first, as soon as the entry point calls `pool()`, so a user who uploads right after the server
started waits only for what is left of one load. core/analysis/inference.py's API is used as is; no Streamlit here (the
load test drives the same pool from plain threads).

Environment: LESIONLENS_ANALYZERS (replicas, default os.cpu_count()), LESIONLENS_TORCH_THREADS (torch threads, default
1; 0 leaves torch's default). One torch thread per analysis: an OpenMP team of 2 on a 2-core machine that is also
serving other sessions stalls at every barrier (measured: analyze + Grad-CAM p50 3.2 s with 2 threads vs 0.31 s with 1).
"""
from __future__ import annotations

import os
import threading
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from core.io.weights_io import DEFAULT_WEIGHTS_DIR

# What a page says while a borrower waits for the first replica: on a busy 2-core machine that takes up to 20 s,
# which "Analysing…" alone made look like a hung analysis.
MODEL_LOADING_TEXT = "Loading the model (first use after a start)…"


class ModelUnavailable(RuntimeError):
    """The weights could not be loaded; str(exc) is the message the pages show (it names the folder and the cause)."""


def weights_dir() -> Path:
    """The weights folder the app serves: LESIONLENS_WEIGHTS, else the repository's weights/."""
    return Path(os.environ.get("LESIONLENS_WEIGHTS") or DEFAULT_WEIGHTS_DIR)


def card_stamp(directory: Path) -> float:
    """Modification time of the folder's model_card.json (0.0 when missing): a new card means new weights."""
    try:
        return (directory / "model_card.json").stat().st_mtime
    except OSError:
        return 0.0


class _Turn:
    """A borrower waiting in line: set once a replica has been handed over to it."""

    def __init__(self):
        self.handed_over = threading.Event()
        self.analyzer = None


class AnalyzerPool:
    """`size` replicas of core.analysis.inference.Analyzer for one weights folder, lent out one analysis at a time."""

    def __init__(self, directory: Path, size: int, torch_threads: int):
        self.directory = Path(directory)
        self.size = max(1, int(size))
        self._free: list = []  # idle replicas
        self._waiting: deque[_Turn] = deque()  # borrowers waiting for a replica, oldest first
        self._guard = threading.Lock()
        self._loaded = 0
        self.device = self.version = ""  # the replicas' torch device and model version, once the first is loaded
        self._error: Exception | None = None
        self._first = threading.Event()  # set once the first replica is in the pool, or loading failed
        self._thread = threading.Thread(target=self._load, args=(torch_threads,), name="analyzer-loader", daemon=True)
        self._thread.start()

    def _load(self, torch_threads: int) -> None:
        try:
            import torch  # imported here, in the background: the first page renders without waiting for torch

            from core.analysis.inference import Analyzer

            if torch_threads > 0:
                torch.set_num_threads(torch_threads)
            for _ in range(self.size):
                analyzer = Analyzer.load(self.directory)
                analyzer.warm_up()  # the one-off costs of a first analysis, paid here rather than by the first user
                self.device, self.version = analyzer.device, analyzer.version
                self._give_back(analyzer)
                self._loaded += 1
                self._first.set()
                # What the page needs right after the first analysis (overlays, CAMs): imported now, while that
                # analysis computes without the GIL, instead of after it.
                import core.analysis.cam  # noqa: F401
                if analyzer.device != "cpu":  # one GPU: replicas would only queue on it
                    break
        except Exception as exc:  # WeightsIntegrityError, missing files, import problems: told to every borrower
            self._error = exc
            self._first.set()

    @property
    def loaded(self) -> int:
        """Replicas loaded so far."""
        return self._loaded

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the first replica is loaded (True) or loading failed (raises ModelUnavailable); False when
        `timeout` passed first."""
        if not self._first.wait(timeout):
            return False
        if self._loaded == 0:
            raise ModelUnavailable(f"The model could not be loaded from `{self.directory}`: {self._error}")
        return True

    def finish_loading(self) -> int:
        """Wait until the loader is done with every replica; how many it loaded (ModelUnavailable when none)."""
        self._thread.join()
        self.wait()
        return self._loaded

    @contextmanager
    def borrow(self):
        """A free replica for the `with` block (waits for one); raises ModelUnavailable when none could be loaded.

        First come, first served: a returned replica goes straight to the longest-waiting borrower. (From a plain
        queue a session that had just returned a replica could take it back before the woken waiter ran; with 8
        users on 2 replicas the slowest analyses then waited 1.7x the median: bench.load_test.)"""
        self.wait()
        analyzer = self._take()
        try:
            yield analyzer
        finally:
            self._give_back(analyzer)

    def _take(self):
        with self._guard:
            if self._free:
                return self._free.pop()
            turn = _Turn()
            self._waiting.append(turn)
        turn.handed_over.wait()
        return turn.analyzer

    def _give_back(self, analyzer) -> None:
        """To the longest-waiting borrower, else back among the idle replicas."""
        with self._guard:
            if not self._waiting:
                self._free.append(analyzer)
                return
            turn = self._waiting.popleft()
        turn.analyzer = analyzer
        turn.handed_over.set()


_pools: dict[tuple[str, float], AnalyzerPool] = {}
_pools_guard = threading.Lock()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def pool() -> AnalyzerPool:
    """The process-wide pool for the current weights: created (and its loading started) on the first call, replaced
    when the model card changes. The entry point calls it first thing, so the model loads while Home renders."""
    directory = weights_dir()
    key = (str(directory), card_stamp(directory))
    with _pools_guard:
        current = _pools.get(key)
        if current is None:
            _pools.clear()  # older weights: their replicas go once no analysis holds them
            current = _pools[key] = AnalyzerPool(directory, _env_int("LESIONLENS_ANALYZERS", os.cpu_count() or 1),
                                                 _env_int("LESIONLENS_TORCH_THREADS", 1))
        return current


def device_text() -> str:
    """Where the analyses run, e.g. 'CPU · 2 cores · 2 of 2 model replicas loaded' (no torch import)."""
    current = pool()
    cores = f"{os.cpu_count()} CPU cores"
    if not current.loaded:
        return f"{cores} · model loading"
    return f"{current.device.upper()} · {cores} · {current.loaded} of {current.size} model replica(s) loaded"
