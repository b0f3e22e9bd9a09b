"""The data folder (DATA_DIR) every page reads: where it comes from (environment, st.secrets, the sidebar box) and
which datasets it holds. The entry point renders the sidebar box once; the value lives in st.session_state."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from ui.auth import is_admin

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_LABELS = {"ham10000": "HAM10000", "isic2017": "ISIC 2017", "acral": "Acral (ISIC Archive)"}
DATA_DIR_KEY = "data_dir"            # the value every page reads (plain session state, survives page switches)
DATA_DIR_WIDGET = "data_dir_input"  # the sidebar text box (widget state is dropped on page switches)


def default_data_dir() -> str:
    """DATA_DIR from the environment, else st.secrets["DATA_DIR"], else ""."""
    value = os.environ.get("DATA_DIR", "").strip()
    if value:
        return value
    try:
        secret = st.secrets.get("DATA_DIR", "")
    except Exception:  # no secrets.toml: streamlit raises; that just means "not set"
        secret = ""
    return str(secret or "").strip()


def resolve_data_dir(value: str | None) -> Path | None:
    """A user-entered folder -> an existing absolute folder, or None (relative: to the working directory if it exists
    there, else to the repository)."""
    value = (value or "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = path if path.exists() else REPO_ROOT / path
    path = path.resolve()
    return path if path.is_dir() else None


def current_data_dir() -> Path | None:
    """The data folder of this session (the sidebar value, else the default), or None when unset or missing."""
    value = st.session_state.get(DATA_DIR_KEY)
    return resolve_data_dir(default_data_dir() if value is None else value)


def available_sources(data_dir: Path) -> list[str]:
    """The dataset folders (ham10000, isic2017, acral) present in `data_dir`."""
    return [s for s in SOURCE_LABELS if (data_dir / s).is_dir()]


def data_dir_sidebar() -> Path | None:
    """The sidebar box for the data folder (rendered once by the entry point, its value shared by every page); with
    sign-in on, only admins see it (the others get the server's folder)."""
    admin = is_admin()
    if DATA_DIR_KEY not in st.session_state or not admin:
        st.session_state[DATA_DIR_KEY] = default_data_dir()
    if not admin:
        return current_data_dir()
    st.session_state[DATA_DIR_WIDGET] = st.session_state[DATA_DIR_KEY]

    def _changed() -> None:
        st.session_state[DATA_DIR_KEY] = st.session_state[DATA_DIR_WIDGET]

    with st.sidebar:
        st.text_input(
            "Data folder (DATA_DIR)", key=DATA_DIR_WIDGET, on_change=_changed, placeholder="e.g. ../shared/data",
            help="Folder holding ham10000/ and/or isic2017/ (see README). Needed for dataset examples, the "
                 "explorer and test images; the model itself does not need it. Set it with the DATA_DIR "
                 "environment variable, st.secrets['DATA_DIR'] or here.",
        )
        path = current_data_dir()
        if path is not None:
            found = [SOURCE_LABELS[s] for s in available_sources(path)]
            st.caption(f"Dataset: {', '.join(found) or 'custom layout'} in `{path}`")
        elif st.session_state.get(DATA_DIR_KEY, "").strip():
            st.warning("That folder does not exist.")
        else:
            st.caption("No data folder set: upload images to analyse them.")
    return path
