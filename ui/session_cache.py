"""Per-session, in-memory caches of analysis results (uploads are never cached across sessions or on disk)."""
from __future__ import annotations

from collections.abc import Callable, Hashable

import streamlit as st

MAX_ENTRIES = 6


def remember(store: str, key: Hashable, compute: Callable, max_entries: int = MAX_ENTRIES):
    """compute() once per `key` in this session's `store` (the oldest entry goes when it is full)."""
    entries = st.session_state.setdefault(store, {})
    if key not in entries:
        if len(entries) >= max_entries:
            entries.pop(next(iter(entries)))
        entries[key] = compute()
    return entries[key]


def cached(store: str, key: Hashable):
    """What `store` holds for `key`, or None (no computation)."""
    return st.session_state.get(store, {}).get(key)
