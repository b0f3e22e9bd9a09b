"""The Batch page's rows: each file's core.analysis.predict CSV fields (the predict CLI's columns, result_row), plus what the
table shows besides (thumbnail, true label of a dataset example, uncertainty in words, measurements)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ui.analyzers import pool
from ui.images import thumbnail_data_uri
from ui.referral import referral_of, verdict_of

MEASUREMENT_COLUMNS = ["area_px", "max_diameter_px", "asymmetry", "border_irregularity", "colours"]


def analyse_one(data: bytes, name: str, true_dx: str = "", context=None) -> dict:
    """One row of the batch table; any problem becomes the row's error (the batch never stops). The referral uses the
    session's threshold when one is set; `context`: the file's core.data.patient_context.PatientContext (the CSV's; a DICOM
    file without one gets the context of its tags, as in core.analysis.predict)."""
    from core.io.dicom_input import is_dicom, read_dicom
    from core.io.intake import ImageRejected, load_image
    from core.data.patient_context import PatientContext
    from core.analysis.predict import blank_row, model_version, result_row

    context = context or PatientContext()
    row = {"thumbnail": None, "file": name, "true_dx": true_dx or None, "uncertainty_text": None,
           **{m: None for m in MEASUREMENT_COLUMNS}, **blank_row(Path(name).stem, context)}
    try:
        if is_dicom(data):  # the first frame, and the patient context of the tags unless the CSV gives one
            image = read_dicom(data, name)
            rgb, context = image.frames[0], context if context.given else image.context
            row.update(blank_row(Path(name).stem, context))
        else:
            rgb = load_image(data, name)
        row["thumbnail"] = thumbnail_data_uri(rgb)
        with pool().borrow() as analyzer:
            r = analyzer.analyze(rgb, context=context)
            version = model_version(analyzer)
    except ImageRejected as exc:
        row["error"] = str(exc)
        return row
    except Exception as exc:  # a model failure on one image must not end the batch
        row["error"] = f"analysis failed: {exc}"
        return row
    row.update(result_row(r, version, referral_of(r).refer, verdict_of(r).level))
    if r.diagnosis_shown:
        m = r.measurements or {}
        row.update({"uncertainty_text": r.uncertainty_text, **{k: m.get(k) for k in MEASUREMENT_COLUMNS[:-1]},
                    "colours": ", ".join(m.get("colours", []))})
    return row


def analyse_all(items: list[tuple[str, Callable[[], bytes], str]], contexts: dict,
                progress: Callable[[int, str], None]) -> pd.DataFrame:
    """items: (name, () -> bytes, true label or ""); contexts: image name without extension -> PatientContext;
    progress(i, name) is called before each. The result table."""
    rows = []
    for i, (name, read, true_dx) in enumerate(items):
        progress(i, name)
        try:
            data = read()
        except OSError as exc:
            data, error = b"", f"cannot read: {exc}"
        else:
            error = ""
        row = analyse_one(data, name, true_dx, contexts.get(Path(name).stem))
        row["error"] = error or row["error"]
        rows.append(row)
    return pd.DataFrame(rows)
