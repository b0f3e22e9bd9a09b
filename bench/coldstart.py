"""3. App cold start: streamlit server health, first Home render, first analysis with the model loaded.

The browser (headless Debian chromium via playwright) is launched *before* the server, so its own start-up is
not counted. Clock zero is the moment `python -m ui.serve` (the server `bash run.sh app` starts) is spawned.

- health_s:        /_stcore/health answers "ok"
- home_render_s:   the Home page shows the shipped model's version from weights/model_card.json ("Version <v>";
                   without a card: the "No model has been shipped yet" notice). Home reads only the card.
- first_analysis_s: then Analyze, upload a 600x450 HAM10000 JPEG, until the caption "Model <v> on CPU" appears.
                   That caption is written only after an Analyzer replica was loaded (ui/analyzers.py: weights read
                   and sha256-checked) and the analysis ran, so this is the first render with the model loaded.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO
from bench.server import stop_process, streamlit_healthy

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _body_has(page, text: str, timeout_ms: int) -> None:
    page.wait_for_function("t => document.body && document.body.innerText.includes(t)", arg=text, timeout=timeout_ms)


def card_version(weights_dir: Path) -> str | None:
    try:
        return str(json.loads((weights_dir / "model_card.json").read_text()).get("version", "unversioned"))
    except (OSError, ValueError):
        return None


def cold_start(data_dir: Path, image_path: Path, weights_dir: Path = REPO / "weights", timeout_s: float = 240,
               log_path: Path | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    version = card_version(weights_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    cmd = ["nice", "-n", "19", sys.executable, "-m", "ui.serve",  # what `bash run.sh app` runs
           "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    result: dict = {"model_card_version": version, "port": port}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = t0 + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"streamlit exited with {proc.returncode}")
                if streamlit_healthy(url):
                    break
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"streamlit not healthy within {timeout_s} s")
                time.sleep(0.05)
            result["health_s"] = time.perf_counter() - t0
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url)
            if version is not None:
                _body_has(page, f"Version {version}", int(timeout_s * 1000))
            else:
                _body_has(page, "No model has been shipped yet", int(timeout_s * 1000))
            result["home_render_s"] = time.perf_counter() - t0
            if version is None:
                result["first_analysis_s"] = None
                result["note"] = "no weights/model_card.json yet: the Analyzer cannot load, first analysis not measured"
                return result
            page.get_by_role("link", name="Analyze").first.click()
            page.get_by_role("heading", name="Analyze an image").first.wait_for(timeout=int(timeout_s * 1000))
            page.locator("[data-testid='stFileUploader'] input[type='file']").first.wait_for(state="attached")
            t_upload = time.perf_counter()
            page.locator("[data-testid='stFileUploader'] input[type='file']").first.set_input_files(str(image_path))
            _body_has(page, f"Model {version} on", int(timeout_s * 1000))
            now = time.perf_counter()
            result["first_analysis_s"] = now - t0
            result["upload_to_result_s"] = now - t_upload
            result["image"] = image_path.name
            return result
        finally:
            stop_process(proc)
            browser.close()
            if log_path:
                log.close()
