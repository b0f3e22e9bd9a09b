"""The shipped model's files as the pages read them (cached, re-read when a file changes): the model card and the
per-image test predictions.

weights/test_predictions.csv (written by train/evaluate.py) has one row per test image: image_id, source, dx, then
per classifier its arg-max and its seven calibrated probabilities. The shipped mask-CN's columns are `pred` and
`p_<code>`; another classifier's are `<model>_pred` and `<model>_p_<code>` (e.g. `classifier_p_mel`), and a
classifier without columns has no per-image predictions (`predictions_of` returns None for it).
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.classes import CLASS_CODES
from ui.analyzers import card_stamp, weights_dir

SHIPPED_MODEL = "mask_cn"


@st.cache_data(show_spinner=False)
def _read_card(directory: str, _stamp: float) -> dict:
    from core.weights_io import read_model_card

    return read_model_card(directory)


def model_card() -> dict | None:
    """The model card of weights_dir(), or None when there is none yet."""
    directory = weights_dir()
    stamp = card_stamp(directory)
    return _read_card(str(directory), stamp) if stamp else None


@st.cache_data(show_spinner=False)
def _read_predictions(path: str, _stamp: float) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_id": str, "source": str, "dx": str})


def test_predictions() -> pd.DataFrame | None:
    """weights/test_predictions.csv as read (every model's columns), or None when it is missing."""
    path = weights_dir() / (model_card() or {}).get("predictions_csv", "test_predictions.csv")
    if not path.is_file():
        return None
    return _read_predictions(str(path), path.stat().st_mtime)


def prediction_columns(model: str) -> list[str]:
    """The CSV columns of `model`'s arg-max and probabilities (see the module docstring)."""
    prefix = "" if model == SHIPPED_MODEL else f"{model}_"
    return [f"{prefix}pred", *(f"{prefix}p_{c}" for c in CLASS_CODES)]


def predictions_of(model: str) -> pd.DataFrame | None:
    """`model`'s test predictions as image_id, source, dx, pred, p_<code>; None when the CSV is missing or has no
    columns for that model."""
    table = test_predictions()
    columns = prediction_columns(model)
    if table is None or not set(columns) <= set(table.columns):
        return None
    standard = ["pred", *(f"p_{c}" for c in CLASS_CODES)]
    return table[["image_id", "source", "dx", *columns]].set_axis(["image_id", "source", "dx", *standard], axis=1)


def test_metrics(card: dict | None, model: str = SHIPPED_MODEL) -> dict:
    """The model card's test classification metrics of `model` ({} when absent)."""
    return (card or {}).get("metrics", {}).get("test", {}).get("classification", {}).get(model, {})


def temperature_of(card: dict, model: str) -> float | None:
    """The temperature `model`'s probabilities were calibrated with (fitted on validation), if the card has it."""
    rule = test_metrics(card, model).get("decision_rule") or {}
    value = rule.get("temperature", card.get("temperature") if model == SHIPPED_MODEL else None)
    return None if value is None else float(value)


def headline_metrics(card: dict | None) -> dict:
    """Test-set headline numbers of the shipped mask-CN (for display and the PDF)."""
    m = test_metrics(card)
    out = {
        "test accuracy": m.get("accuracy"),
        "test balanced accuracy": m.get("balanced_accuracy"),
        "test macro AUC": m.get("macro_auc"),
        "test melanoma sensitivity": m.get("per_class", {}).get("mel", {}).get("recall"),
    }
    return {k: v for k, v in out.items() if v is not None}

