"""Sign-in policy and accountability: who may use a signed-in deployment (and who is an admin) and the append-only
audit trail of who asked what of which model. Imports nothing else from core, so any layer may use it.

access  the allow-list and admins of .streamlit/secrets.toml's [lesionlens] section (python -m core.security.access SECRETS checks a file)
audit   the append-only audit table (SQLite by default, PostgreSQL), one row per analysis, batch image, PACS store, report download, threshold change
"""
