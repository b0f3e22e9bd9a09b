"""Who may use a signed-in deployment and who is an admin: the `[lesionlens]` section of .streamlit/secrets.toml.

    [lesionlens]
    allowed_domains = ["clinic.example"]     # e-mail domains let in (empty: anyone the identity provider signs in)
    allowed_groups = ["dermatology"]         # or: members of any of these groups (the ID token's groups claim)
    groups_claim = "groups"                  # the claim that lists them (Entra ID / Keycloak: "groups")
    admins = ["head@clinic.example"]         # e-mail addresses with the admin role (Audit page, data folder)

A user is let in when neither list is set, or when the e-mail's domain is in `allowed_domains`, or one of the user's
groups is in `allowed_groups`. Without sign-in (no `[auth]` section) the single local user is the admin. Pure logic,
no Streamlit: ui.auth applies it to st.user.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

REFUSED_TEXT = ("Your account is not on this deployment's list of permitted users. Ask the department's "
                "LesionLens administrator for access, or sign out and sign in with your clinic account.")
SETTINGS = ("allowed_domains", "allowed_groups", "groups_claim", "admins", "audit_url")


def _names(section: Mapping, key: str) -> tuple[str, ...]:
    value = section.get(key, [])
    if isinstance(value, str) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"[lesionlens] {key} must be a list of non-empty strings, got {value!r}")
    return tuple(v.strip().lower() for v in value)


@dataclass(frozen=True)
class AccessPolicy:
    """The allow-list and the admin list (all lower case)."""
    allowed_domains: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    groups_claim: str = "groups"

    def __post_init__(self):
        for domain in self.allowed_domains:
            if "@" in domain or "." not in domain:
                raise ValueError(f"[lesionlens] allowed_domains holds {domain!r}: write a domain like 'clinic.example'")
        for admin in self.admins:
            if "@" not in admin:
                raise ValueError(f"[lesionlens] admins holds {admin!r}: write e-mail addresses")

    @classmethod
    def from_settings(cls, section: Mapping | None) -> AccessPolicy:
        """The policy of a `[lesionlens]` secrets section (None or empty: everyone signed in, no admin)."""
        section = dict(section or {})
        unknown = sorted(set(section) - set(SETTINGS))
        if unknown:
            raise ValueError(f"[lesionlens] has unknown settings {unknown}; known: {', '.join(SETTINGS)}")
        claim = section.get("groups_claim", "groups")
        if not isinstance(claim, str) or not claim.strip():
            raise ValueError("[lesionlens] groups_claim must be the name of a claim, e.g. 'groups'")
        return cls(_names(section, "allowed_domains"), _names(section, "allowed_groups"), _names(section, "admins"),
                   claim.strip())

    @property
    def restricted(self) -> bool:
        return bool(self.allowed_domains or self.allowed_groups)

    def allows(self, email: str | None, groups=()) -> bool:
        """Whether a signed-in user with this e-mail and these groups may use the app."""
        if not self.restricted:
            return True
        domain = (email or "").strip().lower().rpartition("@")[2]
        if domain and domain in self.allowed_domains:
            return True
        if isinstance(groups, str):
            groups = [groups]
        return any(str(g).strip().lower() in self.allowed_groups for g in groups or ())

    def is_admin(self, email: str | None) -> bool:
        return (email or "").strip().lower() in self.admins


AUTH_KEYS = ("redirect_uri", "cookie_secret", "client_id", "client_secret", "server_metadata_url")


def check_secrets(secrets: Mapping) -> list[str]:
    """What is wrong with a deployment's secrets (a parsed secrets.toml): the [auth] keys st.login needs (none when
    there is no [auth]: sign-in off) and the [lesionlens] settings. Empty: fine."""
    problems = []
    auth = secrets.get("auth")
    if auth is not None:
        problems += [f"[auth] {key} is missing" for key in AUTH_KEYS if not str(auth.get(key, "")).strip()]
        problems += [f"[auth] {key} is still the template's placeholder" for key in AUTH_KEYS
                     if str(auth.get(key, "")).startswith("REPLACE")]
        if not str(auth.get("redirect_uri", "")).rstrip("/").endswith("/oauth2callback"):
            problems.append("[auth] redirect_uri must be the app's URL + /oauth2callback")
        if len(str(auth.get("cookie_secret", ""))) < 32:
            problems.append("[auth] cookie_secret must be a random string of 32 characters or more")
    try:
        AccessPolicy.from_settings(secrets.get("lesionlens"))
    except ValueError as exc:
        problems.append(str(exc))
    return problems


def main(argv: list[str] | None = None) -> int:
    """`python -m core.security.access SECRETS_TOML`: check a deployment's secrets file (the container's entry point does)."""
    import sys
    import tomllib

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m core.security.access SECRETS_TOML", file=sys.stderr)
        return 2
    try:
        with open(argv[0], "rb") as handle:
            secrets = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"{argv[0]}: {exc}", file=sys.stderr)
        return 1
    problems = check_secrets(secrets)
    for problem in problems:
        print(f"{argv[0]}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{argv[0]}: sign-in {'on' if 'auth' in secrets else 'off'}; settings valid")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
