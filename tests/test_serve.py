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
