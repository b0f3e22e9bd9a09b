"""Audit: the audit trail's records (core.security.audit), newest first, filtered by user, date and action, exported as CSV.
Listed in the navigation for admins only (ui.auth.is_admin); read-only: the trail has no edit or delete path."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import pandas as pd
import streamlit as st

from core.security.audit import ACTIONS, to_csv
from ui.audit_log import audit_log, probabilities_text
from ui.auth import is_admin

SHOWN_ROWS = 1000
ACTION_LABELS = {"analysis": "Analysis", "batch": "Batch image", "pacs_store": "PACS store",
                 "report_download": "PDF report download", "threshold_change": "Referral threshold change"}


def _utc_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.utc)


def filters_ui(users: list[str]) -> dict:
    """The user, date range (UTC days, both included) and action filters as core.security.audit.AuditLog.query arguments."""
    c1, c2, c3 = st.columns([2, 2, 3])
    user = c1.selectbox("User", ["", *users], key="audit_user", format_func=lambda u: u or "everyone")
    today = datetime.now(timezone.utc).date()
    days = c2.date_input("Dates (UTC)", (today - timedelta(days=30), today), key="audit_dates", max_value=today)
    actions = c3.multiselect("Actions", list(ACTIONS), key="audit_actions", format_func=ACTION_LABELS.get,
                             placeholder="every action")
    first, last = (days[0], days[-1]) if days else (None, None)  # a range picked half-way has one day
    return {"user": user or None, "actions": actions or None, "since": first and _utc_start(first),
            "until": last and _utc_start(last + timedelta(days=1))}


def audit_page() -> None:
    st.title("Audit trail")
    if not is_admin():
        st.error("The audit trail is for administrators.", icon=":material/lock:")
        return
    log = audit_log()
    st.caption(f"Every analysis, batch image, PACS store, PDF report download and referral-threshold change, "
               f"append-only (no record can be changed or deleted). Store: `{log.engine.url.render_as_string()}`.")
    rows = log.query(**filters_ui(log.users()))
    st.metric("Records", len(rows))
    if not rows:
        st.info("No records match these filters.")
        return
    st.download_button("Export CSV", to_csv(rows), file_name="lesionlens_audit.csv", mime="text/csv",
                       key="audit_csv", icon=":material/download:")
    table = pd.DataFrame(rows[:SHOWN_ROWS]).assign(
        action=lambda t: t["action"].map(ACTION_LABELS), probabilities=lambda t: t["probabilities"].map(
            probabilities_text))
    st.dataframe(table.drop(columns=["id"]), hide_index=True, key="audit_table", column_config={
        "time": st.column_config.DatetimeColumn("Time (UTC)", format="YYYY-MM-DD HH:mm:ss"),
        "user": "User", "action": "Action", "image_sha256": "Image SHA-256", "model_version": "Model",
        "top_class": "Top class", "probabilities": "Probabilities", "referral": "Referred",
        "uncertainty_level": "Uncertainty", "ood_level": "OOD level",
        "threshold": st.column_config.NumberColumn("Referral threshold", format="%.3f")})
    if len(rows) > SHOWN_ROWS:
        st.caption(f"The newest {SHOWN_ROWS} of {len(rows)} records are shown; the CSV holds them all.")


audit_page()
