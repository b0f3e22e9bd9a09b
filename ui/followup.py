"""What the Compare and History pages share: the no-change band of the loaded weights, the HAM10000 lesions
photographed more than once, and an image with its lesion contour."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.analysis.followup import BAND_FILE, load_band
from core.decisions.model_card import ModelCard
from ui.analyzers import weights_dir
from ui.datasets import split_manifest
from ui.model_files import model_card


@st.cache_data(show_spinner=False)
def _read_band(path: str, _stamp: float, model_version: str, _card: ModelCard) -> tuple[dict | None, str]:
    return load_band(path, _card)


def noise_band() -> tuple[dict | None, str]:
    """(band, description) or (None, why it is unavailable) for the loaded weights."""
    path = weights_dir() / BAND_FILE
    card = model_card()
    stamp = path.stat().st_mtime if path.is_file() else 0.0
    return _read_band(str(path), stamp, card.model_version, card)


@st.cache_data(show_spinner="Reading the dataset…", max_entries=2)
def repeated_lesions(data_dir: str) -> pd.DataFrame:
    """HAM10000 images of lesions photographed more than once (with their split)."""
    table = split_manifest(data_dir, ("ham10000",))
    counts = table["lesion_id"].map(table["lesion_id"].value_counts())
    return table[(table["lesion_id"] != "") & (counts > 1)]
