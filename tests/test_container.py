"""The container for real: the images built with `bash run.sh image --offline` (a Debian base bootstrapped from the apt
mirror, the wheels from a wheelhouse built on this machine: nothing is pulled from a registry, and Docker's layer
cache makes a second build quick), the stack started with compose (the app, its PostgreSQL audit-db), a user signed in
through a local OpenID Connect provider in Debian's chromium, an analysis in the browser, and its audit record read
back from the container's PostgreSQL, again after the stack was taken down and started anew. The app image runs as a
non-root user on CPU torch, and it refuses to start without its secrets (sign-in off) unless told to.
Docker is started by deploy/start_docker.sh (dockerd as root; docker.io installed with apt when missing). Timings go to
test-artifacts/container_timings.json."""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from bench.load_test import free_port
from test_signin import SECRETS, STAFF, _sign_in, browser  # noqa: F401  (browser: the chromium fixture)

REPO = Path(__file__).resolve().parent.parent
TIMINGS = REPO / "test-artifacts" / "container_timings.json"
PROJECT = "lesionlens-test"  # the test's own compose project: its containers and volumes, never a deployment's
BASE = "lesionlens-base:bookworm"
APP_IMAGE = "lesionlens:latest"
# 2.9 GB measured (docs/deploy.md says what is in it); the PyPI torch wheel with its CUDA libraries would add 3 GB
MAX_IMAGE_BYTES = 3.0e9
INSECURE_TRANSPORT = "AUTHLIB_INSECURE_TRANSPORT"
timings: dict[str, float] = {}


def run(cmd: list[str], timeout: float = 300, check: bool = True, env: dict | None = None):
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}",
                    pytrace=False)
    return done


def compose_command() -> list[str]:
    """Compose v2 (`docker compose`) where installed, else Debian's docker-compose 1.29."""
    if run(["docker", "compose", "version"], check=False).returncode == 0:
        return ["docker", "compose"]
    return [shutil.which("docker-compose") or "docker-compose"]


@pytest.fixture(scope="module", autouse=True)
def record_timings():
    yield
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS.write_text(json.dumps(timings, indent=1) + "\n")


@pytest.fixture(scope="module")
def images():
    run(["bash", "deploy/start_docker.sh"], timeout=600)
    started = time.monotonic()
    run(["bash", "run.sh", "image", "--offline"], timeout=3600, env={**os.environ, "LESIONLENS_BASE": BASE})
    timings["image_build_s"] = round(time.monotonic() - started, 1)


@pytest.fixture(scope="module")
def provider(images):
    """The mock identity provider on the address of this machine's Docker bridge (docker0): the one URL that both the browser on this
    machine and the app in its container reach (the app fetches the discovery document and the tokens from it)."""
    from oidc_provider_mock import User, app
    from werkzeug.serving import make_server

    # Authlib allows plain http only to localhost; the provider is on the bridge's address (and HTTPS would need a CA
    # that the container trusts).
    insecure_before = os.environ.get(INSECURE_TRANSPORT)
    os.environ[INSECURE_TRANSPORT] = "1"

    [bridge_address] = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", run(["ip", "-4", "-o", "addr", "show", "docker0"]).stdout)
    server = make_server(bridge_address, 0, app(user_claims=[User(sub=STAFF["email"], claims=STAFF)]), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://{bridge_address}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
        if insecure_before is None:
            os.environ.pop(INSECURE_TRANSPORT)
        else:
            os.environ[INSECURE_TRANSPORT] = insecure_before


class Stack:
    """The compose stack of the test, with its own secrets file, port and database password."""

    def __init__(self, folder: Path, provider: str):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        secrets_file = folder / "secrets.toml"
        secrets_file.write_text(SECRETS.format(app=self.url, idp=provider))
        secrets_file.chmod(0o644)  # a compose secret is a bind mount: the app's user (uid 10001) reads it
        # The test's only change to compose.yaml: the app's Authlib talks plain http to the test's provider.
        override = folder / "compose.test.yaml"
        override.write_text(f"services:\n  app:\n    environment:\n      {INSECURE_TRANSPORT}: '1'\n")
        self.password = secrets.token_hex(16)
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT, "AUDIT_DB_PASSWORD": self.password,
                    "LESIONLENS_PORT": f"127.0.0.1:{port}", "LESIONLENS_SECRETS_FILE": str(secrets_file),
                    "LESIONLENS_BASE": BASE}
        self.compose = [*compose_command(), "-f", str(REPO / "compose.yaml"), "-f", str(override)]

    def __call__(self, *args: str, timeout: float = 300, check: bool = True):
        return run([*self.compose, *args], timeout=timeout, check=check, env=self.env)

    def container(self, service: str) -> str:
        return self("ps", "-q", service).stdout.strip()

    def up_until_healthy(self, timeout: float = 600) -> float:
        """`up -d` without building, then waits until both containers report healthy; the seconds it took."""
        started = time.monotonic()
        self("up", "-d", "--no-build")
        deadline = started + timeout
        while True:
            states = {service: run(["docker", "inspect", "-f", "{{.State.Health.Status}}", self.container(service)],
                                   check=False).stdout.strip() for service in ("audit-db", "app")}
            if all(state == "healthy" for state in states.values()):
                return time.monotonic() - started
            if time.monotonic() > deadline:
                logs = self("logs", "--tail", "40", check=False).stdout
                pytest.fail(f"not healthy after {timeout:.0f} s: {states}\n{logs}", pytrace=False)
            time.sleep(2)

    def audit_url(self) -> str:
        """The audit-db container's PostgreSQL over TCP with the app's password (its address on the compose network)."""
        address = run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                       self.container("audit-db")]).stdout.strip()
        return f"postgresql+psycopg://lesionlens:{self.password}@{address}:5432/lesionlens_audit"


@pytest.fixture(scope="module")
def stack(images, provider, tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("container"), provider)
    stack("down", "--volumes", check=False)  # what an interrupted run left
    try:
        timings["compose_up_to_healthy_s"] = round(stack.up_until_healthy(), 1)
        yield stack
    finally:
        stack("down", "--volumes", check=False)


def test_the_app_image_is_cpu_torch_non_root_and_small(images):
    versions = run(["docker", "run", "--rm", "--entrypoint", "python", APP_IMAGE, "-c",
                    "import os, torch, torchvision, timm; print(os.getuid(), torch.__version__, torch.version.cuda)"])
    uid, torch_version, cuda = versions.stdout.split()
    assert uid == "10001" and cuda == "None", versions.stdout
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", APP_IMAGE]).stdout)
    timings["app_image_bytes"] = size
    assert size <= MAX_IMAGE_BYTES, f"{APP_IMAGE} is {size / 1e9:.2f} GB (torch {torch_version})"


def test_a_signed_in_analysis_is_audited_in_the_container_s_postgresql_and_kept_across_a_restart(stack, browser,
                                                                                                  data_dir):
    from core.security.audit import AuditLog, sha256_of

    image = sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[0]
    page = _sign_in(browser, stack.url, STAFF["email"])
    page.locator('[data-testid="stSidebar"]').get_by_text("Signed in as").wait_for(timeout=60_000)
    page.get_by_role("link", name="Analyze").first.click()
    page.get_by_role("heading", name="Analyze an image").wait_for(timeout=60_000)
    started = time.monotonic()
    page.locator("[data-testid='stFileUploader'] input[type='file']").first.set_input_files(str(image))
    page.get_by_text(f"Result for {image.name}").wait_for(timeout=300_000)
    timings["first_analysis_in_browser_s"] = round(time.monotonic() - started, 1)
    page.context.close()

    [record] = AuditLog(stack.audit_url()).query()
    assert record["user"] == STAFF["email"] and record["action"] == "analysis"
    assert record["image_sha256"] == sha256_of(image.read_bytes())

    stack("down")  # containers gone, the audit-db volume kept
    timings["compose_up_again_to_healthy_s"] = round(stack.up_until_healthy(), 1)
    assert AuditLog(stack.audit_url()).query() == [record]


def test_without_its_secrets_the_app_refuses_to_start_unless_sign_in_off_is_asked_for(images):
    refused = run(["docker", "run", "--rm", APP_IMAGE], timeout=120, check=False)
    assert refused.returncode == 1 and "refusing to start with sign-in off" in refused.stderr, refused.stderr

    port = free_port()
    container = run(["docker", "run", "-d", "-e", "LESIONLENS_SIGN_IN=off", "-p", f"127.0.0.1:{port}:8501",
                     APP_IMAGE]).stdout.strip()
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as answer:
                    if answer.read() == b"ok":
                        break
            except OSError:
                pass
            assert run(["docker", "inspect", "-f", "{{.State.Running}}", container]).stdout.strip() == "true", \
                run(["docker", "logs", container], check=False).stderr[-2000:]
            assert time.monotonic() < deadline, "the app with LESIONLENS_SIGN_IN=off did not answer in 300 s"
            time.sleep(2)
        assert "sign-in is OFF" in run(["docker", "logs", container]).stderr
    finally:
        run(["docker", "rm", "-f", container], check=False)


def test_the_demo_pacs_image_serves_dicomweb_as_orthanc(images):
    container = run(["docker", "run", "-d", "lesionlens-pacs:latest"]).stdout.strip()
    try:
        address = run(["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", container]).stdout.strip()
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}:8042/dicom-web/studies", timeout=5) as answer:
                    studies = json.loads(answer.read() or b"[]")
                    break
            except OSError:
                running = run(["docker", "inspect", "-f", "{{.State.Running}}", container]).stdout.strip() == "true"
                assert running and time.monotonic() < deadline, \
                    run(["docker", "logs", container], check=False).stderr[-2000:]
                time.sleep(1)
        assert studies == []  # the DICOMweb plugin answers QIDO-RS on an empty archive
        assert run(["docker", "exec", container, "id", "-un"]).stdout.strip() == "orthanc"
    finally:
        run(["docker", "rm", "-f", container], check=False)
