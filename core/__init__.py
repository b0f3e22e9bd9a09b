"""LesionLens core: data, models and inference. Never imports Streamlit."""
