"""Sign-in with OpenID Connect through Streamlit's own st.login / st.user / st.logout, and who the user is.

Off by default: without an `[auth]` section in .streamlit/secrets.toml the app serves one local user ("local", the
admin) as before. With it, the entry point calls `sign_in_gate()` before the navigation, so no page renders until the
identity provider has signed the user in and core.security.access's allow-list (the `[lesionlens]` section) lets them in; the
sidebar then shows who is signed in and a sign-out button. See docs/deploy.md and .streamlit/secrets.toml.example.
"""
from __future__ import annotations

import streamlit as st

from core.security.access import REFUSED_TEXT, AccessPolicy
from core.security.audit import LOCAL_USER

SIGN_IN_TEXT = "LesionLens is for the department's staff: sign in with your clinic account to continue."


def _secrets_section(name: str) -> dict:
    try:
        return dict(st.secrets.get(name) or {})
    except Exception:  # no secrets.toml at all: streamlit raises; that means "not configured"
        return {}


def sign_in_configured() -> bool:
    """Whether secrets.toml has an `[auth]` section (then every page requires a signed-in user)."""
    return bool(_secrets_section("auth"))


def policy() -> AccessPolicy:
    """The allow-list and admins of the `[lesionlens]` secrets section (ValueError: it is invalid)."""
    return AccessPolicy.from_settings(_secrets_section("lesionlens"))


def signed_in() -> bool:
    return sign_in_configured() and bool(st.user.is_logged_in)


def current_user() -> str:
    """The signed-in user's e-mail (else their subject id), or "local" when sign-in is off."""
    if not signed_in():
        return LOCAL_USER
    return str(st.user.get("email") or st.user.get("sub") or "unknown")


def is_admin() -> bool:
    """The admin role: the `[lesionlens] admins` e-mails when sign-in is on; the local user when it is off."""
    if not sign_in_configured():
        return True
    try:
        return signed_in() and policy().is_admin(st.user.get("email"))
    except ValueError:
        return False


def _sign_out_button(container) -> None:
    container.button("Sign out", key="sign_out", on_click=st.logout, icon=":material/logout:")


def sign_in_gate() -> None:
    """When sign-in is configured: the sign-in screen (st.stop) for anyone not signed in, the refusal sentence for a
    user outside the allow-list, else the sidebar's "Signed in as" line with a sign-out button."""
    if not sign_in_configured():
        return
    if not st.user.is_logged_in:
        st.title("LesionLens")
        st.write(SIGN_IN_TEXT)
        st.button("Sign in", key="sign_in", on_click=st.login, type="primary", icon=":material/login:")
        st.stop()
    try:
        access = policy()
    except ValueError as exc:
        st.error(f"This deployment's access settings are invalid ({exc}); tell its administrator.")
        st.stop()
    if not access.allows(st.user.get("email"), st.user.get(access.groups_claim) or ()):
        st.title("LesionLens")
        st.error(REFUSED_TEXT, icon=":material/block:")
        st.caption(f"Signed in as {st.user.get('email') or st.user.get('sub')}.")
        _sign_out_button(st)
        st.stop()
    with st.sidebar:
        name = st.user.get("name")
        email = current_user()
        st.markdown(f"Signed in as **{name}**  \n{email}" if name and name != email else f"Signed in as **{email}**")
        _sign_out_button(st)
