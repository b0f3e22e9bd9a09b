"""The pages' one-line hooks into the audit trail (core.security.audit): each writes exactly one record per action, as the
signed-in user (ui.auth; "local" without sign-in), with the model version and the referral threshold applied.

Where the records go: LESIONLENS_AUDIT_URL (any SQLAlchemy URL), else `audit_url` in the `[lesionlens]` section of
.streamlit/secrets.toml, else the SQLite file core.security.audit.default_url() names (~/.local/share/lesionlens/audit.sqlite).
"""
from __future__ import annotations

import functools
import json
import os

import pandas as pd
import streamlit as st

from core.security.audit import URL_ENV, AuditLog, AuditRecord, default_url, record_of_result, sha256_of
from core.data.classes import CLASS_CODES
from ui.auth import current_user
from ui.images import digest
from ui.model_files import model_card
from ui.referral import referral_of, rule, session_threshold

SHOWN_IMAGES = "audit_image_sha256"  # session state: the Analyze cache key (ui.images.digest) -> the image's SHA-256
UNAVAILABLE = ("The audit trail cannot be written ({}), so no result is shown: every result must be recorded. Tell "
               "the LesionLens administrator.")


def audit_url() -> str:
    """The audit store's SQLAlchemy URL (see the module docstring for the order)."""
    from_env = os.environ.get(URL_ENV, "").strip()
    if from_env:
        return from_env
    try:
        configured = str((st.secrets.get("lesionlens") or {}).get("audit_url", "")).strip()
    except Exception:  # no secrets.toml
        configured = ""
    return configured or default_url()


@functools.lru_cache(maxsize=4)
def _log(url: str) -> AuditLog:
    return AuditLog(url)


def audit_log() -> AuditLog:
    """The process-wide audit store (created with its table on first use)."""
    return _log(audit_url())


def model_version() -> str:
    """The card's version and mask-CN's sha256 prefix (ModelCard.model_version; the card is read once per file)."""
    return model_card().model_version


def _write(batch: list[AuditRecord], forget: tuple[str, object] | None = None) -> None:
    """Append the records; when the store fails, the error in words and the run stops (nothing unrecorded is shown),
    and `forget` = (session state key, entry or None) drops the page's kept result so no later rerun shows it."""
    try:
        audit_log().append_many(batch)
    except Exception as exc:  # SQLAlchemy / driver errors: a store that is down, full or refusing
        if forget is not None:
            key, entry = forget
            if entry is None:
                st.session_state.pop(key, None)
            else:
                cache = st.session_state.get(key, {})
                for cached in [k for k in cache if k[0] == entry]:
                    del cache[cached]
        st.error(UNAVAILABLE.format(type(exc).__name__), icon=":material/error:")
        st.stop()


def _record(action: str, image_sha256: str, result) -> AuditRecord:
    referral = referral_of(result)
    return record_of_result(action, current_user(), image_sha256, result, model_version(), referral.refer,
                            referral.threshold)


def record_analysis(data: bytes, result) -> None:
    """Analyze: one record for a new analysis of the image file `data`."""
    sha = sha256_of(data)
    _write([_record("analysis", sha, result)], forget=("result_cache", digest(data)))
    st.session_state.setdefault(SHOWN_IMAGES, {})[digest(data)] = sha


def record_result(action: str, data: bytes, result) -> None:
    """One record of an analysis of the image file `data` (e.g. the PACS page's PDF download button: on_click)."""
    _write([_record(action, sha256_of(data), result)])


def record_report_download(image_digest: str, result) -> None:
    """Analyze's PDF download button (on_click): one record for the report of the analysed image (`image_digest`:
    the page's cache key, ui.images.digest)."""
    _write([_record("report_download", st.session_state.get(SHOWN_IMAGES, {}).get(image_digest, ""), result)])


def record_batch(items: list, table: pd.DataFrame, threshold: float | None) -> None:
    """Batch: one record per analysed image (rows with an error were not analysed), in one transaction. `items`:
    the batch's (name, () -> bytes, true label) in the table's order."""
    applied = rule().threshold if threshold is None else threshold
    batch = []
    for (_, read, _), row in zip(items, table.to_dict("records")):
        if row["error"]:
            continue
        diagnosed = bool(row["pred"])
        batch.append(AuditRecord(
            user=current_user(), action="batch", image_sha256=sha256_of(read()), model_version=row["model_version"],
            top_class=row["pred"], probabilities={c: float(row[f"p_{c}"]) for c in CLASS_CODES} if diagnosed else {},
            referral=(row["refer"] == "yes") if diagnosed else None, uncertainty_level=row["uncertainty_level"],
            ood_level=row["ood_level"], threshold=applied))
    _write(batch, forget=("batch_result", None))


def record_threshold_change() -> None:
    """Model performance: one record of the session's new referral threshold (the card's when reset)."""
    threshold = session_threshold()
    _write([AuditRecord(user=current_user(), action="threshold_change", model_version=model_version(),
                        threshold=rule().threshold if threshold is None else threshold)])


def record_pacs_store(stored: list[tuple[bytes, object]]) -> None:
    """PACS: one record per image whose results were stored into the PACS ((the DICOM file, its analysis) pairs), in
    one transaction."""
    _write([_record("pacs_store", sha256_of(data), result) for data, result in stored])


def probabilities_text(value: str) -> str:
    """A record's probabilities JSON as 'mel 0.610, nv 0.300' for the Audit page."""
    return ", ".join(f"{code} {p:.3f}" for code, p in json.loads(value).items()) if value else ""
