"""The audit trail: one append-only table of who asked what of which model, and what it said.

Every analysis, batch image, PACS store, report download and referral-threshold change becomes one row: the time
(UTC), the user (or "local"), the action, the image's SHA-256 (never pixels, never patient identifiers), the model
version, the top class, the probabilities (JSON), the referral, the uncertainty and OOD levels and the session's
referral threshold. The store is any SQLAlchemy URL: an SQLite file by default (`default_url`), PostgreSQL when
configured. This module offers only `append` and `query`; the database refuses UPDATE and DELETE too (SQLite:
BEFORE UPDATE/DELETE triggers that RAISE(ABORT); PostgreSQL: a trigger function that raises).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (Boolean, Column, DateTime, Float, Integer, MetaData, String, Table, Text, create_engine, event,
                        insert, select, text)
from sqlalchemy.engine import Engine

URL_ENV = "LESIONLENS_AUDIT_URL"
ACTIONS = ("analysis", "batch", "pacs_store", "report_download", "threshold_change")
LOCAL_USER = "local"
REFUSED = "audit records are append-only"

metadata = MetaData()
records = Table(
    "audit_records", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False, index=True),
    Column("user", String(320), nullable=False, index=True),
    Column("action", String(32), nullable=False, index=True),
    Column("image_sha256", String(64), nullable=False, default=""),
    Column("model_version", String(200), nullable=False, default=""),
    Column("top_class", String(16), nullable=False, default=""),
    Column("probabilities", Text, nullable=False, default=""),   # JSON {class code: probability}, "" when none
    Column("referral", Boolean, nullable=True),
    Column("uncertainty_level", String(16), nullable=False, default=""),
    Column("ood_level", String(32), nullable=False, default=""),
    Column("threshold", Float, nullable=True),                    # the referral threshold applied
)
COLUMNS = [c.name for c in records.columns]

_SQLITE_GUARDS = [
    f"CREATE TRIGGER IF NOT EXISTS audit_no_{verb.lower()} BEFORE {verb} ON audit_records "
    f"BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END"
    for verb in ("UPDATE", "DELETE")
]
_POSTGRES_GUARDS = [
    "CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN RAISE EXCEPTION '{REFUSED}'; END $$",
    "DROP TRIGGER IF EXISTS audit_no_change ON audit_records",
    "CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_records "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()",
]


@dataclass(frozen=True)
class AuditRecord:
    """What one row says (the time is set when it is appended)."""
    user: str
    action: str
    image_sha256: str = ""
    model_version: str = ""
    top_class: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    referral: bool | None = None
    uncertainty_level: str = ""
    ood_level: str = ""
    threshold: float | None = None

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"unknown audit action {self.action!r}; one of {', '.join(ACTIONS)}")
        if self.image_sha256 and len(self.image_sha256) != 64:
            raise ValueError("image_sha256 must be a SHA-256 hex digest")


def sha256_of(data: bytes) -> str:
    """The image file's SHA-256 hex digest (what the trail keeps of an image)."""
    return hashlib.sha256(data).hexdigest()


def record_of_result(action: str, user: str, image_sha256: str, result, model_version: str, referral: bool | None,
                     threshold: float | None) -> AuditRecord:
    """The record of a core.analysis.inference.AnalysisResult of the image file with this SHA-256 (no class, probabilities or
    referral for an image refused as not dermoscopy: none were shown)."""
    shown = bool(getattr(result, "diagnosis_shown", True))
    return AuditRecord(
        user=user, action=action, image_sha256=image_sha256, model_version=model_version,
        top_class=result.label if shown else "", probabilities=dict(result.probs) if shown else {},
        referral=referral if shown else None, uncertainty_level=result.uncertainty_level if shown else "",
        ood_level=result.ood_level, threshold=threshold)


def default_url() -> str:
    """LESIONLENS_AUDIT_URL, else an SQLite file in the user's data folder ($XDG_DATA_HOME or ~/.local/share)."""
    url = os.environ.get(URL_ENV, "").strip()
    if url:
        return url
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"sqlite:///{base / 'lesionlens' / 'audit.sqlite'}"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL + synchronous=NORMAL: a commit is an append to the log, no fsync per record (durable at checkpoints)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class AuditLog:
    """The audit table behind one SQLAlchemy URL: created (with its append-only guards) on first use."""

    def __init__(self, url: str | None = None):
        self.url = url or default_url()
        self.engine: Engine = create_engine(self.url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            database = self.engine.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        guards = {"sqlite": _SQLITE_GUARDS, "postgresql": _POSTGRES_GUARDS}.get(self.engine.dialect.name, [])
        with self.engine.begin() as conn:
            metadata.create_all(conn)
            for statement in guards:
                conn.execute(text(statement))

    def append(self, record: AuditRecord) -> None:
        """Write one record (time: now, UTC)."""
        self.append_many([record])

    def append_many(self, batch: list[AuditRecord]) -> None:
        """Write several records in one transaction (a batch's images)."""
        if not batch:
            return
        now = datetime.now(timezone.utc)
        rows = [{"time": now, "user": r.user, "action": r.action, "image_sha256": r.image_sha256,
                 "model_version": r.model_version, "top_class": r.top_class,
                 "probabilities": json.dumps(r.probabilities, sort_keys=True) if r.probabilities else "",
                 "referral": r.referral, "uncertainty_level": r.uncertainty_level, "ood_level": r.ood_level,
                 "threshold": r.threshold} for r in batch]
        with self.engine.begin() as conn:
            conn.execute(insert(records), rows)

    def query(self, user: str | None = None, actions: list[str] | tuple[str, ...] | None = None,
              since: datetime | None = None, until: datetime | None = None, limit: int | None = None) -> list[dict]:
        """Records, newest first, filtered by user, actions and time range [since, until)."""
        stmt = select(records).order_by(records.c.time.desc(), records.c.id.desc())
        if user:
            stmt = stmt.where(records.c.user == user)
        if actions:
            stmt = stmt.where(records.c.action.in_(list(actions)))
        if since is not None:
            stmt = stmt.where(records.c.time >= since)
        if until is not None:
            stmt = stmt.where(records.c.time < until)
        if limit:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(stmt)]
        for row in rows:  # SQLite hands back naive datetimes: they were written as UTC
            if row["time"].tzinfo is None:
                row["time"] = row["time"].replace(tzinfo=timezone.utc)
        return rows

    def users(self) -> list[str]:
        """Every user with a record, sorted."""
        with self.engine.connect() as conn:
            return sorted(conn.execute(select(records.c.user).distinct()).scalars())


def to_csv(rows: list[dict]) -> bytes:
    """Records as CSV (the table's columns, time in ISO 8601 UTC)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "time": row["time"].astimezone(timezone.utc).isoformat()})
    return out.getvalue().encode("utf-8")
