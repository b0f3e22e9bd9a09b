"""The shipped model's files as the pages read them (cached, re-read when a file changes): the model card and the
per-image test predictions.

weights/test_predictions.csv (written by calibration/evaluate.py) has one row per test image of both test sets (`source`
ham10000 / isic2017): image_id, source, dx, lesion_id, then per classifier its arg-max and its seven probabilities,
and the shipped model's mel_score, refer, uncertainty and OOD levels. The shipped mask-CN's columns are `pred` and
`p_<code>`; another classifier's are `<model>_pred` and `<model>_p_<code>` (e.g. `classifier_p_mel`), and a
classifier without columns has no per-image predictions (`predictions_of` returns None for it).
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.data.classes import CLASS_CODES
from core.decisions.model_card import ModelCard, ModelCardError, load_card
from ui.analyzers import card_stamp, weights_dir
from ui.formatting import ci_text, decimals, headline_label

SHIPPED_MODEL = "mask_cn"
PREDICTIONS_FILE = "test_predictions.csv"  # in the weights folder, written by calibration with the card
TEST_SETS = {"ham10000_test": "HAM10000 test", "isic2017_test": "ISIC 2017 official validation"}
TEST_SET_SOURCES = {"ham10000_test": "ham10000", "isic2017_test": "isic2017"}  # test set -> `source` in the CSV


@st.cache_resource(show_spinner=False, max_entries=4)
def _read_card(directory: str, stamp: float) -> ModelCard:
    """Once per card file (its modification time is in the key); a resource, not data: the card is frozen, so every
    session shares one object instead of unpickling a copy per call."""
    return load_card(directory)


def model_card() -> ModelCard:
    """The typed model card of weights_dir() (the entry point refuses to start when card_problem() is not None)."""
    directory = weights_dir()
    return _read_card(str(directory), card_stamp(directory))


def card_problem() -> str | None:
    """Why the app cannot start on weights_dir()'s model card (missing, not JSON, lacking a section it needs: the
    sentence names it and the command that rebuilds the card), or None."""
    try:
        model_card()
    except ModelCardError as exc:
        return str(exc)
    return None


@st.cache_data(show_spinner=False)
def _read_predictions(path: str, _stamp: float) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_id": str, "source": str, "dx": str})


def test_predictions() -> pd.DataFrame | None:
    """weights/test_predictions.csv as read (every model's columns), or None when it is missing."""
    path = weights_dir() / PREDICTIONS_FILE
    if not path.is_file():
        return None
    return _read_predictions(str(path), path.stat().st_mtime)


def prediction_columns(model: str) -> list[str]:
    """The CSV columns of `model`'s arg-max and probabilities (see the module docstring)."""
    prefix = "" if model == SHIPPED_MODEL else f"{model}_"
    return [f"{prefix}pred", *(f"{prefix}p_{c}" for c in CLASS_CODES)]


def predictions_of(model: str, test_set: str | None = None) -> pd.DataFrame | None:
    """`model`'s test predictions as image_id, source, dx, pred, p_<code> (of one test set, or both); None when the
    CSV is missing or has no columns for that model."""
    table = test_predictions()
    columns = prediction_columns(model)
    if table is None or not set(columns) <= set(table.columns):
        return None
    if test_set is not None:
        table = table[table["source"] == TEST_SET_SOURCES[test_set]]
    standard = ["pred", *(f"p_{c}" for c in CLASS_CODES)]
    return table[["image_id", "source", "dx", *columns]].set_axis(["image_id", "source", "dx", *standard], axis=1)


def test_set_metrics(card: ModelCard, test_set: str) -> dict:
    """The model card's figures for one test set (classification, referral, uncertainty, segmentation, retrieval)."""
    return card.display("metrics").get(test_set, {})


def classification_of(card: ModelCard, test_set: str, model: str = SHIPPED_MODEL) -> dict:
    """`model`'s classification metrics on `test_set` ({} when absent)."""
    return test_set_metrics(card, test_set).get("classification", {}).get(model, {})


def headline_metrics(card: ModelCard) -> dict[str, str]:
    """The card's headline figures with their 95 % CIs, as text (for the PDF)."""
    return {headline_label(key): ci_text(entry, decimals) for key, entry in card.display("headline").items()
            if entry}
