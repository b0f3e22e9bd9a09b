"""Load test for LesionLens: concurrent users of the Analyze page, or concurrent threads on one Analyzer.

    nice -n 19 .venv/bin/python -m bench.load_test --sessions 8 --duration 60            # real browsers
    nice -n 19 .venv/bin/python -m bench.load_test --mode threads --sessions 4 --duration 60

Browser mode (default) starts its own Streamlit server on a free loopback port (`streamlit run streamlit_app.py
--server.headless true`), waits for /_stcore/health, warms the model up with one analysis (not counted), then
drives N concurrent sessions: one headless Debian chromium (/usr/bin/chromium) through playwright, one browser
context per session. Each session opens the Analyze page and repeatedly uploads a real full-resolution HAM10000
image (../shared/data/ham10000/fullres/images, each session cycling through its own slice so the per-session
result cache is not hit) through the page's file input, and times:

* time to result   - from set_input_files until "Result for <file name>" is on the page
                     (browser upload + Streamlit rerun + Analyzer.analyze incl. waiting for a free
                     Analyzer replica + rendering of the header);
* time to complete - until the whole rerun finished (CAM, measurements, plot and PDF included);
* analysis time    - Analyzer.analyze's own r.timings["total"], read from the page caption
                     "analysis X.XX s" (compute only: no lock wait, no upload, no rendering).

The server's RSS is sampled from the end of the warm-up (so the model load is not counted as growth); its log is
scanned afterwards for anything that looks like image data (base64 / hex runs, data: URLs), which counts as a
failure. `--torch-threads N` and `--replicas N` set LESIONLENS_TORCH_THREADS and LESIONLENS_ANALYZERS for the server
(the app's defaults: 1 torch thread, one Analyzer replica per core; see ui/analyzers.py) so that they can be compared.

Errors are collected with their messages: timeouts, Streamlit exception boxes (stException) and st.error boxes
(stAlertContentError) such as "Analysis failed: ...". After an error the session reloads the page (a fresh
Streamlit session) and goes on. New iterations start only before --duration has passed; an iteration in flight
then may finish within --timeout. The server's RSS (VmRSS from /proc/<pid>/status) is sampled every
--sample-every seconds. Finally the server is stopped, bench/results/load_<timestamp>.json is written and a table
printed. Only loopback traffic; chromium runs with background networking, component updates and sync disabled.

Threads mode needs no browser: N Python threads borrow from the app's own pool of Analyzer replicas
(ui.analyzers.AnalyzerPool, as the Streamlit sessions do) and call analyze() on real images for --duration seconds
(every other call with cam=True), each followed by its audit record as the app writes it (core.security.audit: SHA-256 of
the image file + one row as user<N>@clinic.example, timed apart as "audit write"; the records are counted at the
end); each result is compared with a sequential run on the same image (probabilities within 1e-5, masks identical,
CAM within 1e-5) to check thread safety. --replicas and --torch-threads default to the
app's settings.

Audit and sign-in (browser mode): the server's audit trail goes to a fresh SQLite file (or `--audit-url`); at the end
every user's "analysis" records are counted against the analyses its session completed: "lost" must be 0 (possibly
cached repeats write no record, so they must be 0 for an exact count). `--signin` adds a local OpenID Connect provider
(oidc-provider-mock, in a thread) and a secrets.toml pointing the server at it (`--secrets.files`, allow-list
`clinic.example`); each session first signs in as its own user (user<N>@clinic.example) through the provider's form.

Run it with `nice -n 19` while anything else needs the CPU; child processes (server, chromium) inherit it.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.server import streamlit_healthy

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "ham10000" / "fullres" / "images"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
TIME_TO_RESULT_NOTE = ("browser mode: 'time to result' = browser upload + Streamlit rerun + analysis (incl. waiting "
                       "for the shared Analyzer lock) + rendering of the result header; 'time to complete' = until "
                       "the rerun finished (CAM, plot, PDF too); 'analysis' = Analyzer.analyze compute time read "
                       "from the page caption (no lock wait, upload or rendering).")
MAX_ERROR_MESSAGES = 50

# ---------------------------------------------------------------- small helpers


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), None for no values."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarise(values: list[float]) -> dict:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "max": max(values) if values else None, "mean": statistics.fmean(values) if values else None}


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, in value units per minute."""
    if len(points) < 3:
        return None
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def read_rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class RssSampler:
    """Samples VmRSS of one pid every `every` seconds in a daemon thread."""

    def __init__(self, pid: int, every: float):
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def start(self) -> "RssSampler":
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = read_rss_mib(self.pid)
            if rss is not None:
                self.samples.append((time.monotonic() - self._t0, rss))
            self._stop.wait(self.every)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=5)
        rss = read_rss_mib(self.pid)
        if rss is not None:
            self.samples.append((time.monotonic() - self._t0, rss))
        return memory_summary(self.samples, self.every)


def memory_summary(samples: list[tuple[float, float]], every: float) -> dict:
    if not samples:
        return {"samples": 0}
    values = [v for _, v in samples]
    half = samples[len(samples) // 2:]
    slope = slope_per_minute(samples)
    slope_half = slope_per_minute(half)
    return {
        "samples": len(samples), "sample_every_s": every,
        "start_mib": values[0], "end_mib": values[-1], "max_mib": max(values), "min_mib": min(values),
        "slope_mib_per_min": slope, "slope_second_half_mib_per_min": slope_half,
        "flat": None if slope_half is None else abs(slope_half) < 5.0,
        "series": [[round(t, 1), round(v, 1)] for t, v in samples],
    }


def list_images(folder: Path) -> list[Path]:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise SystemExit(f"no images in {folder}")
    return images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict:
    """Cheap facts about the run (torch itself is not imported here: browser mode does not need it)."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    return {
        "host": platform.node(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "torch": ver("torch"), "streamlit": ver("streamlit"), "playwright": ver("playwright"),
        "niceness": os.nice(0), "loadavg_start": os.getloadavg(),
    }


# ---------------------------------------------------------------- server


class StreamlitServer:
    def __init__(self, port: int, data_dir: Path | None, log_path: Path, torch_threads: int | None = None,
                 replicas: int | None = None, extra_args: tuple[str, ...] = (), extra_env: dict | None = None):
        self.port, self.data_dir, self.log_path = port, data_dir, log_path
        self.torch_threads, self.replicas = torch_threads, replicas
        self.extra_args, self.extra_env = list(extra_args), dict(extra_env or {})
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 120.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        if self.data_dir is not None:
            env["DATA_DIR"] = str(self.data_dir)
        if self.torch_threads is not None:  # ui.analyzers reads both when it loads the replicas
            env["LESIONLENS_TORCH_THREADS"] = str(self.torch_threads)
        if self.replicas is not None:
            env["LESIONLENS_ANALYZERS"] = str(self.replicas)
        cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "streamlit_app.py"),
               "--server.headless", "true", "--server.port", str(self.port), "--server.address", "127.0.0.1",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", *self.extra_args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}; see {self.log_path}")
            if streamlit_healthy(self.url):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit not healthy after {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.5)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if self._log:
            self._log.close()
        return self.proc.returncode


# ---------------------------------------------------------------- browser mode

# Resolves to {kind: "result"} once the header of the analysis of `name` is rendered, or to an error. Red boxes with
# the priority_high icon are a result (the "Refer" verdict), not an error.
JS_RESULT = r"""
(name) => {
  const main = document.querySelector('[data-testid="stMain"]') || document.body;
  const exc = main.querySelector('[data-testid="stException"]');
  if (exc) return {kind: 'exception', text: exc.innerText.slice(0, 600)};
  const err = [...main.querySelectorAll('[data-testid="stAlertContentError"]')]
      .find(e => !e.innerText.includes('priority_high'));
  if (err) return {kind: 'error', text: err.innerText.slice(0, 600)};
  if (main.innerText.includes('Result for ' + name)) return {kind: 'result'};
  return null;
}
"""

# Resolves once the script run is over; reports the analysis-time caption and any error box.
JS_IDLE = r"""
() => {
  const status = document.querySelector('[data-testid="stStatusWidget"]');
  if (status && /Running/i.test(status.innerText)) return null;
  const main = document.querySelector('[data-testid="stMain"]') || document.body;
  const errors = [...main.querySelectorAll('[data-testid="stException"], [data-testid="stAlertContentError"]')]
      .filter(e => !e.innerText.includes('priority_high')).map(e => e.innerText.slice(0, 600));
  const m = main.innerText.match(/analysis (\d+(?:\.\d+)?) s/);
  if (!m && !errors.length) return null;
  return {analysis_s: m ? parseFloat(m[1]) : null, errors: errors};
}
"""


def _error(records: list, session: int, image: str, kind: str, message: str, started: float) -> None:
    records.append({"session": session, "image": image, "kind": kind, "message": message.strip()[:600],
                    "at_s": round(time.monotonic() - started, 2)})


def signin_user(session: int | str) -> str:
    return f"user{session}@clinic.example"


async def _sign_in(page, url: str, email: str, timeout_ms: float) -> None:
    """Sign in through the identity provider's form (--signin); the session cookie then serves every reload."""
    await page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    await page.get_by_role("button", name="Sign in").click(timeout=timeout_ms)
    await page.get_by_placeholder("sub").fill(email, timeout=timeout_ms)
    await page.get_by_role("button", name="Authorize").click(timeout=timeout_ms)
    await page.get_by_text("Signed in as").first.wait_for(timeout=timeout_ms)


async def _open_analyze(page, url: str, timeout_ms: float) -> None:
    await page.goto(url + "/Analyze", wait_until="domcontentloaded", timeout=timeout_ms)
    try:
        await page.get_by_role("heading", name="Analyze an image").first.wait_for(timeout=timeout_ms / 2)
    except Exception:  # URL path differs: go through the navigation
        await page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
        await page.get_by_role("link", name="Analyze").first.click(timeout=timeout_ms)
        await page.get_by_role("heading", name="Analyze an image").first.wait_for(timeout=timeout_ms)
    await page.locator("[data-testid='stFileUploader'] input[type='file']").first.wait_for(
        state="attached", timeout=timeout_ms)


async def _analyse_once(page, image: Path, timeout_s: float) -> dict:
    """Upload one image and wait for the result. Returns timings or {'error': kind, 'message': ...}."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    file_input = page.locator("[data-testid='stFileUploader'] input[type='file']").first
    t0 = time.monotonic()
    try:
        await file_input.set_input_files(str(image), timeout=timeout_s * 1000)
        handle = await page.wait_for_function(JS_RESULT, arg=image.name, timeout=timeout_s * 1000, polling=200)
        state = await handle.json_value()
    except PlaywrightTimeout:
        return {"error": "timeout", "message": f"no result for {image.name} within {timeout_s:.0f} s"}
    t_result = time.monotonic() - t0
    if state["kind"] != "result":
        return {"error": state["kind"], "message": state.get("text", "")}
    remaining = max(1.0, timeout_s - t_result)
    try:
        handle = await page.wait_for_function(JS_IDLE, timeout=remaining * 1000, polling=200)
        idle = await handle.json_value()
    except PlaywrightTimeout:
        return {"error": "timeout", "message": f"result for {image.name} shown after {t_result:.1f} s but the "
                                               f"page did not finish within {timeout_s:.0f} s"}
    t_complete = time.monotonic() - t0
    if idle["errors"]:
        return {"error": "error_after_result", "message": " | ".join(idle["errors"]), "time_to_result_s": t_result}
    return {"time_to_result_s": t_result, "time_to_complete_s": t_complete, "analysis_s": idle["analysis_s"]}


async def _session(index: int, browser, url: str, images: list[Path], n_sessions: int, args, stop_at: float,
                   started: float, analyses: list, errors: list) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(args.timeout * 1000)
    iteration = 0
    rng = random.Random(index)
    try:
        if args.signin:
            await _sign_in(page, url, signin_user(index), args.timeout * 1000)
        await _open_analyze(page, url, args.timeout * 1000)
        while time.monotonic() < stop_at and iteration < args.max_per_session:
            image = images[(index + iteration * n_sessions) % len(images)]
            repeat = iteration * n_sessions + index >= len(images)
            iteration += 1
            began = time.monotonic() - started
            outcome = await _analyse_once(page, image, args.timeout)
            if "error" in outcome:
                _error(errors, index, image.name, outcome["error"], outcome["message"], started)
                await _open_analyze(page, url, args.timeout * 1000)  # a fresh Streamlit session
                continue
            analyses.append({"session": index, "image": image.name, "started_s": round(began, 2),
                             "finished_s": round(time.monotonic() - started, 2), "maybe_cached": repeat, **outcome})
            if args.think > 0:  # a user looking at the result before the next upload (0.5x..1.5x, seeded per session)
                await asyncio.sleep(args.think * rng.uniform(0.5, 1.5))
    except Exception as exc:  # noqa: BLE001 - a session that dies is reported, the others go on
        _error(errors, index, "", "session_failed", f"{type(exc).__name__}: {exc}", started)
    finally:
        await context.close()


async def _warm_up(browser, url: str, image: Path, timeout_s: float, signin: bool) -> dict:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    try:
        if signin:
            await _sign_in(page, url, signin_user("warmup"), timeout_s * 1000)
        await _open_analyze(page, url, timeout_s * 1000)
        return await _analyse_once(page, image, timeout_s)
    finally:
        await context.close()


async def _drive_browsers(url: str, images: list[Path], args, server_pid: int) -> dict:
    from playwright.async_api import async_playwright

    analyses: list = []
    errors: list = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            warm = None
            if not args.no_warmup:
                print(f"warm-up: one analysis to load the model ({images[-1].name})", flush=True)
                warm = await _warm_up(browser, url, images[-1], max(args.timeout, 240), args.signin)
                print(f"warm-up: {warm}", flush=True)
            # Memory is sampled from here: after the warm-up, so the model load is not mistaken for growth.
            sampler = RssSampler(server_pid, args.sample_every).start()
            started = time.monotonic()
            stop_at = started + args.duration
            try:
                await asyncio.gather(*(_session(i, browser, url, images[:-1] if len(images) > 1 else images,
                                                args.sessions, args, stop_at, started, analyses, errors)
                                       for i in range(args.sessions)))
            finally:
                memory = sampler.stop()
            elapsed = time.monotonic() - started
        finally:
            await browser.close()
    return {"warm_up": warm, "analyses": analyses, "errors": errors, "elapsed_s": elapsed, "memory": memory}


SIGNIN_SECRETS = """
[auth]
redirect_uri = "{app}/oauth2callback"
cookie_secret = "load-test-cookie-secret-0123456789abcdef"
client_id = "lesionlens-load-test"
client_secret = "any-secret-the-mock-accepts"
server_metadata_url = "{idp}/.well-known/openid-configuration"

[lesionlens]
allowed_domains = ["clinic.example"]
"""


@contextlib.contextmanager
def signin_setup(args, port: int, folder: Path):
    """The server's extra flags and environment: its own audit store; with --signin the identity provider (a thread)
    and the secrets.toml pointing at it."""
    if not args.signin:
        yield (), {"LESIONLENS_AUDIT_URL": args.audit_url}
        return
    from oidc_provider_mock import User, run_server_in_thread

    users = [User(sub=signin_user(i), claims={"email": signin_user(i), "name": f"User {i}"})
             for i in [*range(args.sessions), "warmup"]]
    with run_server_in_thread(user_claims=users) as idp:
        secrets = folder / "secrets.toml"
        secrets.write_text(SIGNIN_SECRETS.format(app=f"http://127.0.0.1:{port}",
                                                 idp=f"http://localhost:{idp.server_port}"))
        yield ("--secrets.files", str(secrets)), {"LESIONLENS_AUDIT_URL": args.audit_url}


def audit_check(url: str, sessions: list, warm_up: dict | None, signin: bool) -> dict:
    """Each user's "analysis" records in the audit trail against the analyses its session (or thread) completed,
    one entry per analysis in `sessions` (without sign-in every browser session is the user "local")."""
    from core.security.audit import LOCAL_USER, AuditLog

    def user(session) -> str:
        return signin_user(session) if signin else LOCAL_USER

    found = _count(r["user"] for r in AuditLog(url).query(actions=["analysis"]))
    expected = _count(user(session) for session in sessions)
    if warm_up and "error" not in warm_up:
        expected[user("warmup")] = expected.get(user("warmup"), 0) + 1
    lost = sum(max(0, n - found.get(user, 0)) for user, n in expected.items())
    return {"url": url, "records": sum(found.values()), "expected": sum(expected.values()), "lost": lost,
            "extra": sum(max(0, n - expected.get(user, 0)) for user, n in found.items())}


def run_browser(args, images: list[Path]) -> dict:
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"{CHROMIUM} not found (apt-get install -y chromium)")
    port = args.port or free_port()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = Path(tempfile.mkdtemp(prefix="lesionlens-load-"))
    args.audit_url = args.audit_url or f"sqlite:///{folder / 'audit.sqlite'}"
    with signin_setup(args, port, folder) as (extra_args, extra_env):
        server = StreamlitServer(port, args.data_dir, RESULTS_DIR / f"server_{stamp}.log", args.torch_threads,
                                 args.replicas, extra_args, extra_env)
        print(f"starting streamlit on 127.0.0.1:{port} (log {server.log_path.relative_to(REPO)})", flush=True)
        t_start = time.monotonic()
        server.start()
        print(f"healthy after {time.monotonic() - t_start:.1f} s; pid {server.proc.pid}", flush=True)
        try:
            driven = asyncio.run(_drive_browsers(server.url, images, args, server.proc.pid))
        finally:
            code = server.stop()
    memory = driven["memory"]
    done = driven["analyses"]
    times_result = [a["time_to_result_s"] for a in done]
    times_complete = [a["time_to_complete_s"] for a in done]
    analysis = [a["analysis_s"] for a in done if a.get("analysis_s") is not None]
    span = max([a["finished_s"] for a in done], default=driven["elapsed_s"])
    return {
        "mode": "browser", "server": {"port": port, "exit_code": code, "log": str(server.log_path)},
        "warm_up": driven["warm_up"],
        "total_analyses": len(done), "total_errors": len(driven["errors"]),
        "errors_by_kind": _count(e["kind"] for e in driven["errors"]),
        "errors": driven["errors"][:MAX_ERROR_MESSAGES],
        "time_to_result_s": summarise(times_result), "time_to_complete_s": summarise(times_complete),
        "analysis_s": summarise(analysis),
        "analyses_per_min": 60.0 * len(done) / span if span > 0 else None,
        "elapsed_s": driven["elapsed_s"], "maybe_cached": sum(bool(a["maybe_cached"]) for a in done),
        "server_rss": memory, "server_log": scan_server_log(server.log_path), "note": TIME_TO_RESULT_NOTE,
        "audit": audit_check(args.audit_url, [a["session"] for a in done], driven["warm_up"], args.signin),
        "per_analysis": done,
    }


# A long unbroken base64 / hex run or a data: URL in the server log would be image data leaking into the logs.
_LOG_DATA = re.compile(r"data:image/|[A-Za-z0-9+/]{200,}={0,2}|[0-9a-fA-F]{200,}|(?:\\x[0-9a-f]{2}[^\\]{0,4}){20,}")


def scan_server_log(path: Path) -> dict:
    """Lines of the server log that look like image data (issue 5: logs never contain image data)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return {"lines": 0, "error": str(exc)}
    lines = text.splitlines()
    suspicious = [f"{i + 1}: {line[:160]}" for i, line in enumerate(lines) if _LOG_DATA.search(line)]
    return {"lines": len(lines), "bytes": len(text), "suspicious_lines": len(suspicious),
            "examples": suspicious[:5]}


def _count(items) -> dict:
    out: dict = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


# ---------------------------------------------------------------- threads mode


def _compare(result, reference, tol: float) -> str | None:
    """None when `result` equals `reference` (probs within tol, masks identical, CAM within tol)."""
    import numpy as np

    worst = max(abs(result.probs[c] - reference.probs[c]) for c in reference.probs)
    if worst > tol:
        return f"probabilities differ by {worst:.3g}"
    if result.label != reference.label:
        return f"label {result.label} != {reference.label}"
    if not np.array_equal(result.mask, reference.mask):
        return f"enhanced mask differs in {int((result.mask != reference.mask).sum())} pixels"
    if not np.array_equal(result.coarse_mask, reference.coarse_mask):
        return f"coarse mask differs in {int((result.coarse_mask != reference.coarse_mask).sum())} pixels"
    if (result.cam is None) != (reference.cam is None):
        return "CAM present in one result only"
    if result.cam is not None:
        diff = float(np.abs(result.cam - reference.cam).max())
        if diff > tol:
            return f"CAM differs by {diff:.3g}"
    return None


def run_threads(args, images: list[Path]) -> dict:
    from core.security.audit import AuditLog, record_of_result, sha256_of
    from core.io.intake import load_image_file
    from ui.analyzers import AnalyzerPool

    pool_images = images[: args.unique_images]
    replicas = args.replicas or os.cpu_count() or 1
    torch_threads = 1 if args.torch_threads is None else args.torch_threads
    print(f"loading {replicas} Analyzer replica(s) from {args.weights} ({torch_threads} torch thread(s))", flush=True)
    pool = AnalyzerPool(args.weights, replicas, torch_threads)
    if pool.finish_loading() < replicas:
        print(f"only {pool.loaded} of {replicas} replicas could be loaded", flush=True)
    rgbs = [load_image_file(p) for p in pool_images]
    files = [p.read_bytes() for p in pool_images]
    args.audit_url = args.audit_url or f"sqlite:///{Path(tempfile.mkdtemp(prefix='lesionlens-load-')) / 'audit.sqlite'}"
    trail = AuditLog(args.audit_url)
    print(f"sequential reference on {len(pool_images)} images (cam on and off)", flush=True)
    reference = {}
    seq_times = []
    with pool.borrow() as analyzer:
        analyzer.analyze(rgbs[0])  # warm-up, not timed
        for i, rgb in enumerate(rgbs):
            for cam in (False, True):
                t0 = time.perf_counter()
                reference[(i, cam)] = analyzer.analyze(rgb, cam=cam)
                seq_times.append(time.perf_counter() - t0)

    records: list = []
    errors: list = []
    mismatches: list = []
    lock = threading.Lock()
    started = time.monotonic()
    stop_at = started + args.duration
    barrier = threading.Barrier(args.sessions)

    def worker(index: int) -> None:
        barrier.wait()
        iteration = 0
        while time.monotonic() < stop_at and iteration < args.max_per_session:
            k = (index + iteration) % len(pool_images)
            cam = (index + iteration) % 2 == 1
            iteration += 1
            t0 = time.perf_counter()
            try:
                with pool.borrow() as analyzer:
                    result = analyzer.analyze(rgbs[k], cam=cam)
                    version = analyzer.card.model_version
                t_audit = time.perf_counter()  # what the app's audit hook does after each analysis
                trail.append(record_of_result("analysis", signin_user(index), sha256_of(files[k]), result, version,
                                              result.refer, result.referral_threshold))
                t_audit = time.perf_counter() - t_audit
            except Exception as exc:  # noqa: BLE001
                with lock:
                    _error(errors, index, pool_images[k].name, "exception", f"{type(exc).__name__}: {exc}", started)
                continue
            latency = time.perf_counter() - t0
            problem = _compare(result, reference[(k, cam)], args.tolerance)
            with lock:
                records.append({"thread": index, "image": pool_images[k].name, "cam": cam, "latency_s": latency,
                                "analysis_s": result.timings.get("total"), "audit_write_s": t_audit,
                                "finished_s": time.monotonic() - started})
                if problem:
                    mismatches.append({"thread": index, "image": pool_images[k].name, "cam": cam, "problem": problem})

    sampler = RssSampler(os.getpid(), args.sample_every).start()
    threads = [threading.Thread(target=worker, args=(i,), name=f"analyze-{i}") for i in range(args.sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    memory = sampler.stop()
    latencies = [r["latency_s"] for r in records]
    span = max([r["finished_s"] for r in records], default=elapsed)
    return {
        "mode": "threads", "weights": str(args.weights), "device": pool.device, "model_version": pool.version,
        "replicas": replicas, "torch_threads": torch_threads,
        "unique_images": [p.name for p in pool_images],
        "total_analyses": len(records), "total_errors": len(errors), "errors": errors[:MAX_ERROR_MESSAGES],
        "mismatches_vs_sequential": len(mismatches), "mismatch_details": mismatches[:MAX_ERROR_MESSAGES],
        "thread_safe": not mismatches and not errors,
        "latency_s": summarise(latencies),
        "analysis_s": summarise([r["analysis_s"] for r in records if r["analysis_s"] is not None]),
        "sequential_latency_s": summarise(seq_times),
        "audit_write_s": summarise([r["audit_write_s"] for r in records]),
        "audit": audit_check(args.audit_url, [r["thread"] for r in records], None, True),
        "analyses_per_min": 60.0 * len(records) / span if span > 0 else None,
        "elapsed_s": elapsed, "process_rss": memory,
        "note": ("threads mode: 'latency' = wall time of one analyze() call in a thread (incl. waiting for a free "
                 "Analyzer replica); 'analysis' = r.timings['total'] (compute only)."),
    }


# ---------------------------------------------------------------- report


def _fmt(value, unit: str = "s") -> str:
    if value is None:
        return "-"
    return f"{value:.2f} {unit}".strip()


def print_table(report: dict) -> None:
    r = report["result"]
    rows = [("mode", r["mode"]), ("sessions / threads", str(report["config"]["sessions"])),
            ("duration (requested)", f"{report['config']['duration']} s"),
            ("think time (mean)", f"{report['config'].get('think', 0)} s"), ("elapsed", _fmt(r["elapsed_s"])),
            ("total analyses", str(r["total_analyses"])), ("errors", str(r["total_errors"])),
            ("analyses / min", _fmt(r["analyses_per_min"], ""))]
    if r["mode"] == "browser":
        for key, label in (("time_to_result_s", "time to result"), ("time_to_complete_s", "time to complete"),
                           ("analysis_s", "analysis (server compute)")):
            s = r[key]
            rows.append((f"{label} p50 / p95 / max",
                         f"{_fmt(s['p50'])} / {_fmt(s['p95'])} / {_fmt(s['max'])}"))
        mem = r["server_rss"]
        rows.append(("possibly cached repeats", str(r["maybe_cached"])))
        threads = report["config"].get("torch_threads")
        rows.append(("torch threads (server)", "app default (1)" if threads is None else str(threads)))
        log = r["server_log"]
        rows.append(("server log", f"{log.get('lines', 0)} lines, {log.get('suspicious_lines', '?')} look like "
                                   "image data"))
    else:
        for key, label in (("latency_s", "latency per analysis"), ("analysis_s", "analysis (compute)"),
                           ("sequential_latency_s", "sequential latency")):
            s = r[key]
            rows.append((f"{label} p50 / p95 / max", f"{_fmt(s['p50'])} / {_fmt(s['p95'])} / {_fmt(s['max'])}"))
        rows.append(("mismatches vs sequential", str(r["mismatches_vs_sequential"])))
        s = r["audit_write_s"]
        rows.append(("audit write (SHA-256 + record) p50 / p95", f"{_fmt(s['p50'] and s['p50'] * 1e3, 'ms')} / "
                                                                 f"{_fmt(s['p95'] and s['p95'] * 1e3, 'ms')}"))
        rows.append(("thread safe", str(r["thread_safe"])))
        mem = r["process_rss"]
    audit = r["audit"]
    rows.append((f"audit{' (sign-in on)' if report['config']['signin'] else ''}: records / expected / lost",
                 f"{audit['records']} / {audit['expected']} / {audit['lost']} (extra {audit['extra']})"))
    if mem.get("samples"):
        rows.append(("RSS start / end / max", f"{mem['start_mib']:.0f} / {mem['end_mib']:.0f} / "
                                              f"{mem['max_mib']:.0f} MiB"))
        rows.append(("RSS slope (all / 2nd half)", f"{_fmt(mem['slope_mib_per_min'], 'MiB/min')} / "
                                                   f"{_fmt(mem['slope_second_half_mib_per_min'], 'MiB/min')}"))
    rows.append(("load average start / end", f"{report['environment']['loadavg_start'][0]:.2f} / "
                                             f"{report['environment']['loadavg_end'][0]:.2f}"))
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    if r.get("errors"):
        print("\n  errors:")
        for e in r["errors"][:10]:
            print(f"    [{e['kind']}] session {e['session']} {e['image']}: {e['message'][:200]}")
    print(f"\n  note: {r['note']}")
    print(f"  written: {report['path']}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load_test", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("browser", "threads"), default="browser")
    parser.add_argument("--sessions", type=int, default=8, help="concurrent browser sessions / threads")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds during which new analyses start")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of real images to upload")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                        help="DATA_DIR for the server (dataset pages)")
    parser.add_argument("--timeout", type=float, default=180.0, help="per-analysis timeout, seconds")
    parser.add_argument("--max-per-session", type=int, default=500, help="loop bound per session / thread")
    parser.add_argument("--sample-every", type=float, default=2.0, help="RSS sampling period, seconds")
    parser.add_argument("--no-warmup", action="store_true", help="browser mode: count the first (model-loading) run")
    parser.add_argument("--weights", type=Path, default=REPO / "weights", help="threads mode: weights folder")
    parser.add_argument("--unique-images", type=int, default=6, help="threads mode: images cycled through")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="threads mode: probability / CAM tolerance")
    parser.add_argument("--think", type=float, default=0.0,
                        help="browser mode: mean pause (s) after each result before the next upload; 0 = back to "
                             "back, i.e. the server saturated (time to result then includes queueing behind the "
                             "other sessions)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads (default: the app's, 1; 0 = torch's own): browser mode sets "
                             "LESIONLENS_TORCH_THREADS for the server")
    parser.add_argument("--replicas", type=int, default=None,
                        help="Analyzer replicas serving the sessions (default: the app's, one per core): browser mode "
                             "sets LESIONLENS_ANALYZERS for the server")
    parser.add_argument("--signin", action="store_true",
                        help="browser mode: sign-in on (a local OpenID Connect provider), each session its own user; "
                             "the audit trail's records are checked against the analyses")
    parser.add_argument("--audit-url", default="", help="the audit store the server (browser mode) or the threads "
                        "write to (default: a fresh SQLite file)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/load_<ts>.json)")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.duration <= 0 or args.timeout <= 0 or args.max_per_session < 1:
        parser.error("--sessions, --duration, --timeout and --max-per-session must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    os.chdir(REPO)
    images = list_images(args.images)
    env = environment()
    stamp = datetime.now(timezone.utc)
    result = run_browser(args, images) if args.mode == "browser" else run_threads(args, images)
    env["loadavg_end"] = os.getloadavg()
    path = args.out or RESULTS_DIR / f"load_{stamp.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = {"created": stamp.isoformat(timespec="seconds"), "config": config, "environment": env,
              "result": result, "path": str(path)}
    path.write_text(json.dumps(report, indent=1, default=str))
    print_table(report)
    failed = (result["total_errors"] or (result["mode"] == "threads" and not result["thread_safe"])
              or (result["mode"] == "browser" and result["server_log"].get("suspicious_lines"))
              or (result.get("audit") or {}).get("lost"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
