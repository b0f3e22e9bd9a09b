"""Thread safety of the shared Analyzer (the dashboard shares one between all sessions via st.cache_resource).

Four threads start together (a barrier) and each runs three analyses on three real full-resolution HAM10000
images, half of them with a Grad-CAM; every result must equal the sequential result for the same image:
probabilities within 1e-5, the same label, identical enhanced and coarse masks, the CAM within 1e-5 and
measurements equal. The calls must really have overlapped in time (otherwise the test proved nothing) and no
two results may share array memory (a reused buffer would let one session's result change under another's).
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from core.analysis.inference import Analyzer
from core.io.intake import load_image_file

N_THREADS = 4
PER_THREAD = 3
TOL = 1e-5


@pytest.fixture(scope="module")
def analyzer(repo_root):
    return Analyzer.load(repo_root / "weights")


@pytest.fixture(scope="module")
def images(data_dir):
    folder = data_dir / "ham10000" / "fullres" / "images"
    paths = sorted(folder.glob("*.jpg"))
    assert len(paths) >= 3, f"need 3 real images in {folder}"
    # three different classes' worth of spread: first, middle, last
    chosen = [paths[0], paths[len(paths) // 2], paths[-1]]
    return [(p.name, load_image_file(p)) for p in chosen]


def _differences(result, reference, compare_cam: bool) -> list[str]:
    problems = []
    worst = max(abs(result.probs[c] - reference.probs[c]) for c in reference.probs)
    if worst > TOL:
        problems.append(f"probabilities differ by {worst:.3g}")
    if result.label != reference.label:
        problems.append(f"label {result.label} != {reference.label}")
    if not np.array_equal(result.mask, reference.mask):
        problems.append(f"mask differs in {int((result.mask != reference.mask).sum())} px")
    if not np.array_equal(result.coarse_mask, reference.coarse_mask):
        problems.append(f"coarse mask differs in {int((result.coarse_mask != reference.coarse_mask).sum())} px")
    if abs(result.uncertainty_score - reference.uncertainty_score) > TOL or result.ood_level != reference.ood_level:
        problems.append("uncertainty / OOD differ")
    if result.measurements.keys() != reference.measurements.keys() or any(
            not np.isclose(float(result.measurements[k]), float(reference.measurements[k]), rtol=1e-6, atol=1e-6)
            for k in reference.measurements if isinstance(reference.measurements[k], (int, float))):
        problems.append("measurements differ")
    if compare_cam:
        if result.cam is None:
            problems.append("cam=True returned no CAM")
        elif float(np.abs(result.cam - reference.cam).max()) > TOL:
            problems.append(f"CAM differs by {float(np.abs(result.cam - reference.cam).max()):.3g}")
    elif result.cam is not None:
        problems.append("cam=False returned a CAM")
    return problems


def test_shared_analyzer_is_thread_safe(analyzer, images):
    # Sequential references (cam=True: the same mask/probabilities as cam=False, plus the CAM).
    reference = {name: analyzer.analyze(rgb, cam=True) for name, rgb in images}
    for name, r in reference.items():
        assert r.cam is not None and r.cam.shape == r.mask.shape, name

    barrier = threading.Barrier(N_THREADS)
    results: list[tuple[int, str, bool, object, float, float]] = []
    failures: list[str] = []
    guard = threading.Lock()

    def worker(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            for j in range(PER_THREAD):
                name, rgb = images[(index + j) % len(images)]
                cam = (index + j) % 2 == 1
                start = time.perf_counter()
                r = analyzer.analyze(rgb.copy(), cam=cam)
                with guard:
                    results.append((index, name, cam, r, start, time.perf_counter()))
        except Exception as exc:  # noqa: BLE001 - reported below with the thread's index
            with guard:
                failures.append(f"thread {index}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,), name=f"analyze-{i}") for i in range(N_THREADS)]
    _run_all(threads)
    assert not failures, failures
    assert len(results) == N_THREADS * PER_THREAD
    assert {cam for _, _, cam, _, _, _ in results} == {False, True}

    problems = []
    for index, name, cam, r, _, _ in results:
        problems += [f"thread {index} {name} cam={cam}: {p}" for p in _differences(r, reference[name], cam)]
    assert not problems, "\n".join(problems)

    # The threads really ran concurrently: some call started before another thread's call had ended.
    overlapping = any(a[0] != b[0] and a[4] < b[5] and b[4] < a[5] for a in results for b in results)
    assert overlapping, "no two analyze() calls overlapped in time; the test did not exercise concurrency"

    # Each result owns its arrays (no buffer shared between sessions).
    arrays = [arr for _, _, _, r, _, _ in results for arr in (r.mask, r.coarse_mask, r.cam) if arr is not None]
    arrays += [arr for r in reference.values() for arr in (r.mask, r.coarse_mask, r.cam)]
    for i, a in enumerate(arrays):
        for b in arrays[i + 1:]:
            assert not np.shares_memory(a, b), "two analysis results share an array buffer"


def test_cam_for_and_analyze_interleaved(analyzer, images):
    """The dashboard runs cam_for (other class / method) in one session while another session analyses."""
    name, rgb = images[0]
    other_name, other_rgb = images[1]
    expected_cams = {code: analyzer.cam_for(rgb, code, "Grad-CAM") for code in ("mel", "nv")}
    expected_other = analyzer.analyze(other_rgb)
    barrier = threading.Barrier(3)
    out: dict = {}
    errors: list = []

    def cam_worker(code: str) -> None:
        try:
            barrier.wait(timeout=30)
            out[code] = analyzer.cam_for(rgb, code, "Grad-CAM")
        except Exception as exc:  # noqa: BLE001
            errors.append(f"cam_for {code}: {type(exc).__name__}: {exc}")

    def analyze_worker() -> None:
        try:
            barrier.wait(timeout=30)
            out["analysis"] = analyzer.analyze(other_rgb)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"analyze: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=cam_worker, args=(c,)) for c in ("mel", "nv")]
    threads.append(threading.Thread(target=analyze_worker))
    _run_all(threads)
    assert not errors, errors
    for code, cam in expected_cams.items():
        assert float(np.abs(out[code] - cam).max()) <= TOL, f"{name}: CAM for {code} changed under concurrency"
    assert not np.allclose(out["mel"], out["nv"]), "the two classes' CAMs got mixed up"
    assert not _differences(out["analysis"], expected_other, compare_cam=False), other_name


def _run_all(threads: list[threading.Thread]) -> None:
    """Start the threads together and wait for them; a thread still running after 2 minutes is a hang."""
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung (deadlock?)"
