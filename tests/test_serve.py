"""ui.serve (what `bash run.sh app` runs): the model starts loading before the Streamlit server does, and the entry
point's pool() finds that same pool instead of starting a second load at the first browser request."""
from __future__ import annotations

import sys

import pytest

import ui.analyzers as analyzers
import ui.serve as serve


def test_serve_starts_the_model_load_before_the_server_and_the_app_reuses_it(monkeypatch, tmp_path):
    monkeypatch.setenv("LESIONLENS_WEIGHTS", str(tmp_path))  # an empty folder: the load fails fast, in the background
    monkeypatch.setattr(analyzers, "_pools", {})
    seen = {}

    def fake_streamlit_main():
        seen["pools_when_server_starts"] = list(analyzers._pools.values())
        seen["argv"] = list(sys.argv)
        return 0

    import streamlit.web.cli

    monkeypatch.setattr(streamlit.web.cli, "main", fake_streamlit_main)
    monkeypatch.setattr(sys, "argv", ["ui.serve"])
    assert serve.main(["--server.port", "8765"]) == 0
    assert len(seen["pools_when_server_starts"]) == 1  # loading had started before the server
    assert seen["argv"] == ["streamlit", "run", str(serve.APP), "--server.port", "8765"]
    assert serve.APP.name == "streamlit_app.py" and serve.APP.is_file()
    started = seen["pools_when_server_starts"][0]
    assert analyzers.pool() is started  # what streamlit_app.py calls on every run
    with pytest.raises(analyzers.ModelUnavailable, match=str(tmp_path)):
        started.finish_loading()


def test_the_pool_warms_each_replica_up_before_lending_it(monkeypatch, repo_root):
    from core.analysis.inference import Analyzer

    warmed = []
    warm_up = Analyzer.warm_up

    def recording_warm_up(self):
        result = warm_up(self)
        warmed.append((self, result))
        return result

    monkeypatch.setattr(Analyzer, "warm_up", recording_warm_up)
    replicas = analyzers.AnalyzerPool(repo_root / "weights", size=1, torch_threads=0)
    with replicas.borrow() as analyzer:
        assert [a for a, _ in warmed] == [analyzer]  # warmed up before it was lent
    result = warmed[0][1]
    # the made-up lesion went through every network: segmented, measured, a CAM (a drawing: refused as not skin)
    assert 0.1 < (result.mask > 0).mean() < 0.3 and result.ood_level == "not_skin"
    assert result.measurements["area_px"] > 0 and result.cam is not None


def test_a_returned_replica_goes_to_the_longest_waiting_borrower(repo_root):
    import threading
    import time

    replicas = analyzers.AnalyzerPool(repo_root / "weights", size=1, torch_threads=0)
    replicas.finish_loading()
    order, holding, release = [], threading.Event(), threading.Event()

    def holder():
        with replicas.borrow():
            holding.set()
            release.wait()
        with replicas.borrow():  # asks again at once: behind those who were already waiting
            order.append("holder again")

    def borrower(name):
        with replicas.borrow():
            order.append(name)

    def queued(n):
        deadline = time.monotonic() + 10
        while len(replicas._waiting) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(replicas._waiting)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    holding.wait()
    for n, name in enumerate(("first", "second"), start=1):
        threads.append(threading.Thread(target=borrower, args=(name,)))
        threads[-1].start()
        assert queued(n) == n
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == ["first", "second", "holder again"]
