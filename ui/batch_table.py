"""The Batch page's result table: one row per file (thumbnail, prediction, probabilities, OOD flag, measurements or
the reason it was not analysed)."""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from core.classes import CLASS_CODES, MALIGNANT_CODES
from ui.analyzers import pool
from ui.formatting import class_label_marked
from ui.images import thumbnail_data_uri

PROB_COLUMNS = [f"p_{c}" for c in CLASS_CODES]
MEASUREMENT_COLUMNS = ["area_px", "max_diameter_px", "asymmetry", "border_irregularity", "colours"]


def empty_row(name: str, true_dx: str = "", error: str = "") -> dict:
    """A row with every column, nothing analysed yet."""
    return {"thumbnail": None, "file": name, "true_dx": true_dx or None, "prediction": None, "pred_code": None,
            "probability": None, "malignant_total": None, "uncertainty": None, "ood": None,
            **{p: None for p in PROB_COLUMNS}, **{m: None for m in MEASUREMENT_COLUMNS}, "error": error}


def analyse_one(data: bytes, name: str, true_dx: str = "") -> dict:
    """One row of the batch table; any problem becomes the row's error (the batch never stops)."""
    from core.intake import ImageRejected, load_image

    row = empty_row(name, true_dx)
    try:
        rgb = load_image(data, name)
        row["thumbnail"] = thumbnail_data_uri(rgb)
        with pool().borrow() as analyzer:
            r = analyzer.analyze(rgb)
    except ImageRejected as exc:
        row["error"] = str(exc)
        return row
    except Exception as exc:  # a model failure on one image must not end the batch
        row["error"] = f"analysis failed: {exc}"
        return row
    m = r.measurements or {}
    row.update({
        "prediction": class_label_marked(r.label), "pred_code": r.label, "probability": r.probs[r.label],
        "malignant_total": sum(p for c, p in r.probs.items() if c in MALIGNANT_CODES),
        "uncertainty": r.uncertainty, "ood": bool(r.ood), **{f"p_{c}": r.probs.get(c) for c in CLASS_CODES},
        **{k: m.get(k) for k in MEASUREMENT_COLUMNS[:-1]}, "colours": ", ".join(m.get("colours", [])),
    })
    return row


def analyse_all(items: list[tuple[str, Callable[[], bytes], str]], progress: Callable[[int, str], None]) -> pd.DataFrame:
    """items: (name, () -> bytes, true label or ""); progress(i, name) is called before each. The result table."""
    rows = []
    for i, (name, read, true_dx) in enumerate(items):
        progress(i, name)
        try:
            data = read()
        except OSError as exc:
            rows.append(empty_row(name, true_dx, f"cannot read: {exc}"))
            continue
        rows.append(analyse_one(data, name, true_dx))
    return pd.DataFrame(rows)
