"""The container recipe, checked without Docker (tests/test_container.py builds and runs it for real): the deployed
Streamlit config is valid and hardened, the Dockerfile copies everything the app imports and runs it as a non-root
user with a health check, compose.yaml builds the three services from it and wires the app to PostgreSQL (and Orthanc
in the `pacs` profile), and the image's entry point script accepts good secrets and refuses bad ones by name, and
refuses to start without them unless sign-in off is asked for (run for real, as in the image)."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from core.security.access import check_secrets

REPO = Path(__file__).resolve().parent.parent
GOOD_SECRETS = """
[auth]
redirect_uri = "https://lesionlens.clinic.example/oauth2callback"
cookie_secret = "0123456789abcdef0123456789abcdef"
client_id = "lesionlens"
client_secret = "s3cret"
server_metadata_url = "https://idp.clinic.example/.well-known/openid-configuration"

[lesionlens]
allowed_domains = ["clinic.example"]
admins = ["head@clinic.example"]
"""


def test_the_deployed_config_is_streamlit_s_and_hardened():
    from streamlit import config

    deployed = tomllib.loads((REPO / "deploy" / "config.toml").read_text())
    known = config.get_config_options()
    options = {f"{section}.{key}": value for section, keys in deployed.items() for key, value in keys.items()}
    assert not [name for name in options if name not in known], "unknown Streamlit options"
    assert options["client.showErrorDetails"] == "none"           # no stack traces to users
    assert options["server.enableXsrfProtection"] is True
    assert 0 < options["server.maxUploadSize"] <= 50               # MB
    assert options["client.toolbarMode"] == "viewer"


def _dockerfile() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _imported_top_level(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_the_dockerfile_copies_what_the_app_imports_and_runs_it_non_root_with_a_health_check():
    steps = _dockerfile()
    assert steps[0] == ("ARG", "BASE=debian:bookworm-slim") and steps[1] == ("FROM", "${BASE} AS base")
    copied = {args.split()[0].rstrip("/") for op, args in steps if op == "COPY" and not args.startswith("--from=")}
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    # every repository package the app's modules import is in the image
    app_files = [REPO / "streamlit_app.py", *(f for d in ("core", "ui", "app_pages") for f in (REPO / d).rglob("*.py"))]
    local = {p.name for p in REPO.iterdir() if p.is_dir() and (p / "__init__.py").exists() or p.suffix == ".py"}
    needed = {name for f in app_files for name in _imported_top_level(f)} & {n.removesuffix(".py") for n in local}
    assert needed <= copied | {"streamlit_app"}, f"imported but not copied: {needed - copied}"
    pages = [node.value for node in ast.walk(ast.parse((REPO / "streamlit_app.py").read_text()))
             if isinstance(node, ast.Constant) and str(node.value).startswith("app_pages/")]
    assert pages and all(page.split("/")[0] in copied for page in pages), "the pages are not copied"
    assert {"weights", "deploy/config.toml"} <= copied                    # weights baked in, the hardened config
    run = " ".join(args for op, args in steps if op == "RUN")
    assert "--no-index --find-links /tmp/wheelhouse" in run                # offline: the wheelhouse
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in run  # online: CPU torch wheels
    app = steps[next(i for i, step in enumerate(steps) if step == ("FROM", "base AS app")):]
    [user] = [args for op, args in app if op == "USER"]
    assert user not in ("root", "0")
    [health] = [args for op, args in app if op == "HEALTHCHECK"]
    [port] = [args for op, args in app if op == "EXPOSE"]
    assert f"127.0.0.1:{port}/_stcore/health" in health
    [entry] = [args for op, args in app if op == "ENTRYPOINT"]
    script = REPO / entry.strip('[]"')
    assert script.is_file() and os.access(script, os.X_OK)


def test_compose_runs_the_app_on_postgresql_with_orthanc_as_an_optional_profile():
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    app, db = services["app"], services["audit-db"]
    assert {service["build"]["target"] for service in services.values()} == {"app", "audit-db", "pacs"}
    assert all(service["build"]["context"] == "." for service in services.values())
    assert "8501" in app["ports"][0]
    url = app["environment"]["LESIONLENS_AUDIT_URL"]
    assert url.startswith("postgresql+psycopg://") and "@audit-db:5432/" in url
    assert app["depends_on"]["audit-db"]["condition"] == "service_healthy"
    assert db["environment"]["POSTGRES_DB"] in url
    assert services["orthanc"]["profiles"] == ["pacs"] and "profiles" not in app
    assert app["environment"]["LESIONLENS_SECRETS"] == "/run/secrets/lesionlens.toml"  # Streamlit wants *.toml
    assert app["secrets"] == [{"source": "lesionlens", "target": "lesionlens.toml"}]
    assert compose["secrets"]["lesionlens"]["file"] == "${LESIONLENS_SECRETS_FILE:-./deploy/secrets.toml}"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert not source.startswith("./") or (REPO / source).exists(), source


def _entrypoint(tmp_path, secrets: str | None, **extra_env: str) -> subprocess.CompletedProcess:
    path = tmp_path / "secrets.toml"
    if secrets is not None:
        path.write_text(secrets)
    env = {**os.environ, "LESIONLENS_SECRETS": str(path), "PYTHON": sys.executable, **extra_env}
    return subprocess.run([str(REPO / "deploy" / "entrypoint.sh"), "check"], env=env, capture_output=True,
                          text=True, timeout=60)


def test_the_entrypoint_checks_the_secrets_before_starting(tmp_path):
    good = _entrypoint(tmp_path, GOOD_SECRETS)
    assert good.returncode == 0 and "sign-in on; settings valid" in good.stdout, good.stderr
    bad = _entrypoint(tmp_path, GOOD_SECRETS.replace("0123456789abcdef0123456789abcdef", "short")
                      .replace('client_id = "lesionlens"', ""))
    assert bad.returncode == 1
    assert "[auth] client_id is missing" in bad.stderr and "cookie_secret must be" in bad.stderr
    untyped = tmp_path / "lesionlens"
    untyped.write_text(GOOD_SECRETS)
    ignored = _entrypoint(tmp_path, None, LESIONLENS_SECRETS=str(untyped))  # Streamlit would skip it: sign-in off
    assert ignored.returncode == 1 and "only from a file named *.toml" in ignored.stderr
    strange = _entrypoint(tmp_path, GOOD_SECRETS + 'alowed_groups = ["x"]\n')
    assert strange.returncode == 1 and "unknown settings ['alowed_groups']" in strange.stderr
    missing = _entrypoint(tmp_path / "nowhere", None)
    assert missing.returncode == 1 and "refusing to start with sign-in off" in missing.stderr
    told = _entrypoint(tmp_path / "nowhere", None, LESIONLENS_SIGN_IN="off")
    assert told.returncode == 0 and "sign-in is OFF" in told.stderr


def test_the_secrets_template_is_valid_once_filled_in():
    template = (REPO / ".streamlit" / "secrets.toml.example").read_text()
    assert "[auth]" not in tomllib.loads(template)  # as shipped: sign-in off (the local app stays as it was)
    settings = tomllib.loads(re.sub(r"(?m)^#(?=\S)", "", template))
    assert set(settings) == {"DATA_DIR", "auth", "lesionlens", "pacs"}
    assert settings["pacs"]["url"].endswith("/dicom-web")  # core.io.pacs.Pacs.from_config reads url, user, password
    assert "[auth] cookie_secret is still the template's placeholder" in check_secrets(settings)
    settings["auth"].update(cookie_secret="f" * 64, client_id="lesionlens", client_secret="s3cret")
    assert check_secrets(settings) == []


@pytest.mark.parametrize("path", ["deploy/secrets.toml", ".streamlit/secrets.toml"])
def test_real_secrets_stay_out_of_git_and_the_image(path):
    ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0
    assert ignored, f"{path} is not git-ignored"
    assert path in (REPO / ".dockerignore").read_text().splitlines()
