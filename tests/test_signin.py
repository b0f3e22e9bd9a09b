"""Sign-in for real: a local OpenID Connect provider (the oidc-provider-mock package, in a thread), the dashboard
started by bench.load_test's StreamlitServer with a secrets.toml pointing at it (`--secrets.files`), and Debian's
chromium driven by playwright through the provider's sign-in form. Before sign-in no page shows anything but the
sign-in screen; after it the sidebar says who is signed in and an analysis is audited as that user; a user outside
the allow-list gets the refusal sentence; only admins see the Audit page and the data-folder field; sign-out returns
to the sign-in screen. The allow-list and admin rules (core.security.access) are checked directly first."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.security.access import REFUSED_TEXT, AccessPolicy
from ui.auth import SIGN_IN_TEXT

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
STAFF = {"email": "ana@clinic.example", "name": "Ana Lima"}
ADMIN = {"email": "head@clinic.example", "name": "Head of Dermatology"}
PARTNER = {"email": "gus@partner.example", "name": "Gus", "groups": ["Dermatology"]}  # let in by group
STRANGER = {"email": "eve@elsewhere.example", "name": "Eve"}
SECRETS = """
[auth]
redirect_uri = "{app}/oauth2callback"
cookie_secret = "test-cookie-secret-0123456789abcdef"
client_id = "lesionlens"
client_secret = "any-secret-the-mock-accepts"
server_metadata_url = "{idp}/.well-known/openid-configuration"

[lesionlens]
allowed_domains = ["clinic.example"]
allowed_groups = ["dermatology"]
admins = ["head@clinic.example"]
"""


# ---------------------------------------------------------------- the rules
def test_the_allow_list_lets_in_domains_and_groups_only():
    policy = AccessPolicy.from_settings({"allowed_domains": ["Clinic.example"], "allowed_groups": ["dermatology"],
                                         "admins": ["Head@clinic.example"]})
    assert policy.allows("ana@clinic.example") and policy.allows("ANA@CLINIC.EXAMPLE")
    assert policy.allows("gus@partner.example", ["Dermatology"]) and policy.allows("gus@partner.example", "dermatology")
    assert not policy.allows("eve@elsewhere.example", ["radiology"])
    assert not policy.allows("eve@clinic.example.evil.test") and not policy.allows(None)
    assert policy.is_admin("head@clinic.example") and not policy.is_admin("ana@clinic.example")
    assert AccessPolicy.from_settings(None).allows("anyone@anywhere.example")  # no list: whoever the IdP signs in


@pytest.mark.parametrize("section, message", [
    ({"allowed_domains": "clinic.example"}, "must be a list"),
    ({"allowed_domains": ["@clinic.example"]}, "write a domain"),
    ({"admins": ["head"]}, "write e-mail addresses"),
    ({"allowed_domain": ["clinic.example"]}, "unknown settings"),
])
def test_invalid_access_settings_are_refused_by_name(section, message):
    with pytest.raises(ValueError, match=message):
        AccessPolicy.from_settings(section)


# ---------------------------------------------------------------- the real sign-in
@pytest.fixture(scope="module")
def provider():
    from oidc_provider_mock import User, run_server_in_thread

    users = [User(sub=claims["email"], claims=claims) for claims in (STAFF, ADMIN, PARTNER, STRANGER)]
    with run_server_in_thread(user_claims=users) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The server's secrets.toml, audit store (audit.sqlite) and log."""
    return tmp_path_factory.mktemp("signin")


def audit_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'audit.sqlite'}"


@pytest.fixture(scope="module")
def signed_app(provider, folder):
    """The dashboard with sign-in configured (its own secrets.toml and audit store): its URL."""
    from bench.load_test import StreamlitServer, free_port

    port = free_port()
    server = StreamlitServer(port, None, folder / "server.log", replicas=1,
                             extra_args=("--secrets.files", str(folder / "secrets.toml")),
                             extra_env={"LESIONLENS_AUDIT_URL": audit_url(folder)})
    (folder / "secrets.toml").write_text(SECRETS.format(app=server.url, idp=provider))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: install it with `apt-get install -y chromium`", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                               "--disable-background-networking", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()


def _sign_in(browser, app: str, email: str, path: str = ""):
    """A fresh browser (no cookies) signs in as `email` through the provider's form; returns the page."""
    page = browser.new_context().new_page()
    page.goto(f"{app}/{path}")
    page.get_by_text(SIGN_IN_TEXT).wait_for(timeout=60_000)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_placeholder("sub").fill(email)  # the identity provider's form
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(f"{app}/**", timeout=60_000)
    return page


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / f"signin_{name}.png"), full_page=True)


def _nav_links(page) -> list[str]:
    """The navigation's page titles (each link's text is its icon's name, then its title)."""
    return [t.strip().split("\n")[-1] for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]


def test_no_page_renders_before_sign_in(signed_app, browser):
    page = browser.new_context().new_page()
    for path in ("", "Analyze", "Batch", "Audit", "Model_performance"):
        page.goto(f"{signed_app}/{path}")
        page.get_by_text(SIGN_IN_TEXT).wait_for(timeout=60_000)
        page.wait_for_timeout(500)
        assert page.get_by_role("button", name="Sign in").is_visible()
        assert not page.locator('[data-testid="stSidebarNav"]').count()
        body = page.locator('[data-testid="stMain"]').inner_text()
        assert "Analyze an image" not in body and "Upload" not in body and "Audit trail" not in body, body
    _shot(page, "before")
    page.context.close()


def test_staff_sign_in_shows_who_audits_as_them_and_signs_out(signed_app, browser, data_dir, folder):
    from core.security.audit import AuditLog, sha256_of

    page = _sign_in(browser, signed_app, STAFF["email"])
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Signed in as").wait_for(timeout=60_000)
    assert STAFF["name"] in sidebar.inner_text() and STAFF["email"] in sidebar.inner_text()
    sidebar.get_by_text("Decision support only").wait_for(timeout=60_000)     # the sidebar is complete
    assert "Analyze" in _nav_links(page) and "Audit" not in _nav_links(page)  # not an admin
    assert not page.get_by_label("Data folder (DATA_DIR)", exact=True).count()  # hidden from non-admins
    _shot(page, "staff")
    page.get_by_role("link", name="Analyze").first.click()
    page.get_by_role("heading", name="Analyze an image").wait_for(timeout=60_000)
    image = sorted((data_dir / "ham10000" / "fullres" / "images").glob("*.jpg"))[0]
    page.locator("[data-testid='stFileUploader'] input[type='file']").first.set_input_files(str(image))
    page.get_by_text(f"Result for {image.name}").wait_for(timeout=180_000)
    [record] = AuditLog(audit_url(folder)).query()
    assert record["user"] == STAFF["email"] and record["action"] == "analysis"
    assert record["image_sha256"] == sha256_of(image.read_bytes())
    sidebar.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="End session").click(timeout=60_000)  # the provider ends its session too
    page.get_by_text(SIGN_IN_TEXT).wait_for(timeout=60_000)
    page.context.close()


def test_a_group_member_from_another_domain_is_let_in(signed_app, browser):
    page = _sign_in(browser, signed_app, PARTNER["email"])
    page.locator('[data-testid="stSidebar"]').get_by_text("Signed in as").wait_for(timeout=60_000)
    assert PARTNER["email"] in page.locator('[data-testid="stSidebar"]').inner_text()
    page.context.close()


def test_a_user_outside_the_allow_list_is_refused_with_a_sentence(signed_app, browser):
    page = _sign_in(browser, signed_app, STRANGER["email"], path="Analyze")
    page.get_by_text(REFUSED_TEXT).wait_for(timeout=60_000)
    assert not _nav_links(page)
    assert "Analyze an image" not in page.locator('[data-testid="stMain"]').inner_text()
    _shot(page, "refused")
    page.context.close()


def test_an_admin_sees_the_audit_page_and_the_data_folder(signed_app, browser):
    page = _sign_in(browser, signed_app, ADMIN["email"])
    page.locator('[data-testid="stSidebar"]').get_by_text("Signed in as").wait_for(timeout=60_000)
    page.get_by_label("Data folder (DATA_DIR)", exact=True).wait_for(timeout=60_000)
    assert "Audit" in _nav_links(page)
    page.get_by_role("link", name="Audit").first.click()
    page.get_by_role("heading", name="Audit trail").wait_for(timeout=60_000)
    page.get_by_role("button", name="Export CSV").wait_for(timeout=60_000)
    _shot(page, "audit")
    page.context.close()
