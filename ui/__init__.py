"""The dashboard's shared UI layer; the Streamlit pages (streamlit_app.py, app_pages/) are layout only and import it.

Presentation only: where the data folder is, cached loaders around core/, the Analyzer replicas that serve every
session, plotly figures, wording and image encoding. Models, metrics, measurements and the PDF layout live in core/,
which never imports this package.
"""
