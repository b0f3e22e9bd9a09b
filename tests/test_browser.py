"""End-to-end: the real app in a real browser (Debian chromium driven by playwright).

Starts the server as `bash run.sh app` does (`python -m ui.serve`: the model starts loading before the server) on a free port, opens a page by its URL (the navigation must be the full one),
walks through every page with the sidebar navigation, uploads a full-resolution HAM10000 image on Analyze (and asks
for the PDF), clicks a confusion-matrix cell, analyses a small batch (with one broken file) on Batch, compares a random
same-lesion pair on Compare follow-up, evaluates a
folder on Evaluate your data (and cancels a second run with its Cancel button), and saves a screenshot of each page to test-artifacts/screenshots/<page>.png. With SAVE_SCREENSHOTS=1 small
(900 px wide, < 300 KB) copies go to docs/screenshots/ for the README.

chromium must be installed at /usr/bin/chromium (`apt-get install -y chromium`); a missing browser fails the test.
"""
from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from apptest_support import class_folder

from bench.server import stop_process, streamlit_healthy
from core.data.classes import CLASS_CODES, CLASSES
from core.decisions.triage import HEADLINES

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "test-artifacts" / "screenshots"
DOC_SHOTS = REPO / "docs" / "screenshots"
WIDTH = 1440
DOC_WIDTH = 900          # README screenshots (SAVE_SCREENSHOTS=1)
DOC_MAX_BYTES = 300_000
CLASS_NAMES = [c.name for c in CLASSES]
SLOW_MS = 180_000  # first analysis loads the model on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(data_dir):
    port = _free_port()
    env = {**os.environ, "DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    log = (REPO / "test-artifacts")
    log.mkdir(exist_ok=True)
    out = open(log / "streamlit_server.log", "w")
    cmd = ["nice", "-n", "19", sys.executable, "-m", "ui.serve",
           "--server.port", str(port), "--server.headless", "true", "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}; see {log / 'streamlit_server.log'}")
            if streamlit_healthy(url):
                break
            if time.time() > deadline:
                pytest.fail("streamlit did not become healthy within 90 s")
            time.sleep(0.5)
        yield url
    finally:
        stop_process(proc)
        out.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: install it with `apt-get update && apt-get install -y chromium`",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()


def _idle(page, timeout_ms: int = SLOW_MS) -> None:
    """Wait until the script run finished (Streamlit's running indicator gone) and the page settled."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => { const w = document.querySelector('[data-testid=\"stStatusWidget\"]');"
        " return !w || !/Running|Stop/.test(w.innerText); }", timeout=timeout_ms)
    page.wait_for_timeout(500)


def _shot(page, name: str, doc: bool = True) -> Path:
    """Full-height screenshot (Streamlit scrolls an inner container, so grow the viewport to fit)."""
    height = page.evaluate(
        "() => Math.max(...['[data-testid=\"stMain\"]', '[data-testid=\"stAppViewContainer\"]', 'section.main']"
        ".map(s => document.querySelector(s)).filter(Boolean).map(e => e.scrollHeight), document.body.scrollHeight)")
    page.set_viewport_size({"width": WIDTH, "height": int(min(max(height, 900), 7000))})
    page.wait_for_timeout(800)  # plotly re-layouts on resize
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": WIDTH, "height": 1000})
    assert path.stat().st_size > 10_000
    if doc and os.environ.get("SAVE_SCREENSHOTS") == "1":
        _doc_copy(path, DOC_SHOTS / f"{name}.png")
    return path


def _doc_copy(path: Path, target: Path, width: int = DOC_WIDTH, max_bytes: int = DOC_MAX_BYTES) -> None:
    """A small copy for the README: DOC_WIDTH px wide PNG, palette-reduced when needed to stay under max_bytes."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as img:
        img = img.convert("RGB")
        img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
    img.save(target, optimize=True)
    for colours in (256, 128, 64):
        if target.stat().st_size <= max_bytes:
            break
        img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            target, optimize=True)


def _goto(page, title: str) -> None:
    page.get_by_role("link", name=title).first.click()
    heading = {"Analyze": "Analyze an image", "Compare follow-up": "Compare baseline and follow-up"}.get(title, title)
    page.get_by_role("heading", name=heading).first.wait_for(timeout=60_000)
    _idle(page)


def _no_exception(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, page.locator(
        "[data-testid='stException']").first.inner_text()


def test_every_page_in_a_real_browser(server, browser, data_dir, tmp_path):
    page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
    page.set_default_timeout(60_000)
    try:
        _tour(page, server, data_dir, tmp_path)
    except Exception:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "failure.png"), full_page=True)
        raise
    finally:
        page.close()


NAVIGATION = [("Home", "home"), ("Analyze", "biotech"), ("Dataset explorer", "photo_library"),
              ("Model performance", "monitoring"), ("Batch", "stacks"), ("Compare follow-up", "compare"),
              ("Lesion history", "timeline"), ("Evaluate your data", "fact_check"), ("PACS", "lan"),
              ("Audit", "history")]  # without sign-in the local user is the admin


def _navigation(page) -> list[tuple[str, str]]:
    """(title, material icon) of every page link in the sidebar."""
    links = page.locator("[data-testid='stSidebarNav'] a")
    links.first.wait_for()
    return [(links.nth(i).locator("[data-testid='stMarkdownContainer']").inner_text().strip(),
             links.nth(i).locator("[data-testid='stIconMaterial']").inner_text().strip()) for i in range(links.count())]


def test_a_page_opened_by_its_url_has_the_full_navigation(server, browser):
    """Opening /Analyze directly (no visit to Home first) shows the same page list, titles and icons as Home."""
    page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
    page.set_default_timeout(60_000)
    try:
        page.goto(server + "/Analyze")
        page.get_by_role("heading", name="Analyze an image").first.wait_for()
        assert _navigation(page) == NAVIGATION
        page.goto(server)
        page.get_by_role("heading", name="LesionLens").first.wait_for()
        assert _navigation(page) == NAVIGATION
    finally:
        page.close()


def _tour(page, server, data_dir, tmp_path) -> None:
    page.goto(server)
    page.get_by_role("heading", name="LesionLens").first.wait_for()
    _idle(page)
    page.get_by_text("not a diagnosis").first.wait_for()
    page.get_by_text("Shipped model").first.wait_for()
    page.get_by_text("At clinics the model was not trained on").first.wait_for()  # the held-out figures (#23)
    _no_exception(page)
    _shot(page, "home")

    # Analyze: upload a full-resolution image through the real file input
    _goto(page, "Analyze")
    image = sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[0]
    page.locator("[data-testid='stFileUploader'] input[type='file']").first.set_input_files(str(image))
    page.get_by_text(f"Result for {image.name}").first.wait_for(timeout=SLOW_MS)
    _idle(page)
    heading = page.locator("h3").filter(has_text="(").first.inner_text()
    assert any(heading.startswith(name) for name in CLASS_NAMES), heading
    page.get_by_text("Class probabilities").first.wait_for()
    page.locator("[data-testid='stPlotlyChart']").first.wait_for()
    page.get_by_text("Maximum diameter (Feret)").first.wait_for()
    page.get_by_text("referral threshold").first.wait_for()
    alerts = page.locator("[data-testid='stAlert']").all_inner_texts()
    assert any(f"{h}." in a for a in alerts for h in HEADLINES.values()), alerts  # the verdict (after its icon)
    page.get_by_text("Similar cases").first.wait_for()
    _no_exception(page)
    page.get_by_role("button", name="Prepare PDF report").click()
    _idle(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="PDF report", exact=True).click()
    pdf = tmp_path / "report.pdf"
    download.value.save_as(pdf)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    _idle(page)
    _shot(page, "analyze")

    _goto(page, "Dataset explorer")
    page.get_by_text("10,015").first.wait_for(timeout=SLOW_MS)
    page.get_by_text("Split sizes").first.wait_for(timeout=SLOW_MS)
    _idle(page)
    _no_exception(page)
    _shot(page, "dataset_explorer")

    _goto(page, "Model performance")
    page.get_by_text("Balanced accuracy").first.wait_for()
    _no_exception(page)
    _shot(page, "model_performance")
    page.get_by_role("tab", name="Confusion").click()
    page.get_by_text("test image(s): true Melanoma, predicted Melanocytic nevus").first.wait_for(timeout=SLOW_MS)
    _idle(page)
    _no_exception(page)
    # clicking a cell (row 2 = true bcc, column 2 = predicted bcc of the 7 x 7 grid) opens its drill-down
    grid = page.locator("[data-testid='stPlotlyChart']").first.locator(".nsewdrag").first.bounding_box()
    page.mouse.click(grid["x"] + grid["width"] * 1.5 / 7, grid["y"] + grid["height"] * 1.5 / 7)
    page.get_by_text("test image(s): true Basal cell carcinoma, predicted Basal cell carcinoma").first.wait_for(
        timeout=SLOW_MS)
    _idle(page)
    _no_exception(page)
    _shot(page, "model_performance_confusion")
    page.get_by_role("tab", name="Referral").click()
    page.get_by_text("Your session's referral threshold").first.wait_for()
    _idle(page)
    _no_exception(page)
    _shot(page, "model_performance_referral")
    page.get_by_role("tab", name="Reliability").click()
    page.get_by_text("temperature T =").first.wait_for()
    _no_exception(page)
    _shot(page, "model_performance_uncertainty")  # the Reliability tab opens with uncertainty (docs/pages.md)
    for tab in ("ROC & PR", "Segmentation", "Models"):
        page.get_by_role("tab", name=tab).click()
        _idle(page)
        _no_exception(page)
        _shot(page, "model_performance_" + tab.split()[0].lower(), doc=False)
    page.get_by_role("tab", name="Robustness").click()
    page.get_by_text("Reliability statements on sources they were fitted without").first.wait_for()
    _idle(page)
    _no_exception(page)
    _shot(page, "model_performance_out_of_source")

    # Batch: two good images and one broken file; the broken one becomes an error row
    _goto(page, "Batch")
    good = sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[1:3]
    page.locator("[data-testid='stFileUploader'] input[type='file']").first.set_input_files(
        [{"name": p.name, "mimeType": "image/jpeg", "buffer": p.read_bytes()} for p in good]
        + [{"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8\xff junk"}])
    page.get_by_role("button", name="Analyse 3 image(s)").click()
    page.get_by_role("button", name="Download results (CSV)").wait_for(timeout=SLOW_MS)
    _idle(page)
    _no_exception(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download results (CSV)").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [r["image"] for r in rows] == [p.stem for p in good] + ["broken"]
    assert rows[2]["error"] and not rows[0]["error"] and not rows[1]["error"]
    assert all((r["pred"] in CLASS_CODES and r["refer"] in ("yes", "no")) or
               (r["ood_level"] in ("clinical_photo", "not_skin") and r["pred"] == r["refer"] == "") for r in rows[:2]), rows
    # the table shows a thumbnail per analysed file, and the rejected file is named with its reason
    assert page.locator("[data-testid='stDataFrame']").count() >= 1
    page.get_by_text("Not analysed").first.wait_for()
    assert "broken.jpg" in page.locator("[data-testid='stAlert']").filter(has_text="Not analysed").first.inner_text()
    _shot(page, "batch")

    # Compare follow-up: a random pair of images of one held-out lesion, registered and compared
    _goto(page, "Compare follow-up")
    page.get_by_text("Dataset pair (same lesion)").first.click()
    _idle(page)
    page.get_by_role("button", name="Random same-lesion pair").click()
    page.get_by_role("button", name="Download comparison report (PDF)").wait_for(timeout=SLOW_MS)
    _idle(page)
    _no_exception(page)
    _shot(page, "compare")

    # Evaluate your data: a small one-folder-per-class folder of test images runs to its report; a larger one is
    # cancelled with the Cancel button while it runs, and reported as cancelled
    small, large = class_folder(tmp_path / "small", data_dir, 2), class_folder(tmp_path / "large", data_dir, 8)
    _goto(page, "Evaluate your data")
    _evaluate(page, small)
    page.get_by_text("Images evaluated").first.wait_for(timeout=SLOW_MS)
    _idle(page)
    _no_exception(page)
    page.get_by_role("tab", name="Confusion").click()
    _idle(page)
    _shot(page, "evaluate")
    _evaluate(page, large)
    page.get_by_text(f"Evaluating {large}").first.wait_for(timeout=SLOW_MS)
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("Cancelled.").first.wait_for(timeout=SLOW_MS)
    _idle(page)
    _no_exception(page)
    done = page.locator("[data-testid='stAlert']").filter(has_text="Cancelled.").first.inner_text()
    assert f"of {7 * 8 + 1} images" in done, done


def _evaluate(page, folder: Path) -> None:
    box = page.get_by_placeholder("/data/my_lesions")
    box.fill(str(folder))
    box.press("Enter")
    _idle(page)
    page.get_by_role("button", name="Evaluate", exact=True).click()
