"""LesionLens dashboard entry point: starts loading the model, renders the shared data-folder sidebar and the
navigation.

Run:  streamlit run streamlit_app.py      (DATA_DIR=../shared/data for dataset features)

Streamlit runs this file for every page of every session (also when a page is opened by its URL), so the page list
with its titles and icons is always the one below. The pages live in app_pages/, not pages/: Streamlit ignores
pages/ only in a run that reaches st.navigation, and the runs that stop before it (the sign-in gate, a model card the
app refuses) would list every file of pages/ and open it by its URL, past the gate (seen in a browser with Streamlit
1.67). They contain layout only; what they share is in ui/.
"""
from __future__ import annotations

import streamlit as st

from ui.analyzers import pool
from ui.auth import is_admin, sign_in_gate
from ui.data_folder import data_dir_sidebar
from ui.model_files import card_problem

PAGES = [  # (file, title, icon, URL path)
    ("app_pages/home.py", "Home", ":material/home:", ""),
    ("app_pages/analyze.py", "Analyze", ":material/biotech:", "Analyze"),
    ("app_pages/dataset_explorer.py", "Dataset explorer", ":material/photo_library:", "Dataset_explorer"),
    ("app_pages/model_performance.py", "Model performance", ":material/monitoring:", "Model_performance"),
    ("app_pages/batch.py", "Batch", ":material/stacks:", "Batch"),
    ("app_pages/compare.py", "Compare follow-up", ":material/compare:", "Compare"),
    ("app_pages/history.py", "Lesion history", ":material/timeline:", "History"),
    ("app_pages/evaluate.py", "Evaluate your data", ":material/fact_check:", "Evaluate"),
    ("app_pages/pacs.py", "PACS", ":material/lan:", "PACS"),
    ("app_pages/audit.py", "Audit", ":material/history:", "Audit"),
]
ADMIN_PAGES = {"app_pages/audit.py"}  # listed for admins only (ui.auth.is_admin)


def main() -> None:
    pool()  # the model loads in the background from the first request on, while the first page renders
    st.set_page_config(page_title="LesionLens", page_icon=":material/biotech:", layout="wide")
    sign_in_gate()  # with [auth] in secrets.toml: nothing below runs until an allowed user is signed in
    problem = card_problem()
    if problem:  # every page quotes the card's rules: none may run on a card that lacks one
        st.error(f"LesionLens cannot start: {problem}", icon=":material/error:")
        st.stop()
    data_dir_sidebar()
    pages = [st.Page(path, title=title, icon=icon, url_path=url or None, default=not url)
             for path, title, icon, url in PAGES if path not in ADMIN_PAGES or is_admin()]
    st.navigation(pages).run()
    with st.sidebar:
        st.caption("Decision support only — not a diagnosis.")


main()
