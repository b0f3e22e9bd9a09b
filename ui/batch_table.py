"""The Batch page's rows: each image's core.analysis.predict CSV fields (the predict CLI's columns, result_row), plus what
the table shows besides (thumbnail, true label of a dataset example, uncertainty in words, measurements). A multi-frame
DICOM gives one row per frame."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ui.analyzers import pool
from ui.images import thumbnail_data_uri
from ui.referral import referral_of, verdict_of

MEASUREMENT_COLUMNS = ["area_px", "max_diameter_px", "asymmetry", "border_irregularity", "colours"]


def file_rows(data: bytes, name: str, true_dx: str = "", context=None) -> list[dict]:
    """The batch table's rows of one file: its one image, or every frame of a multi-frame DICOM (the CSV's image
    <stem>_frame<k>, as core.analysis.predict names them). Any problem becomes a row's error (the batch never stops).
    `context`: the file's core.data.patient_context.PatientContext (the CSV's; a DICOM file without one gets the
    context of its tags, as in core.analysis.predict)."""
    from core.analysis.predict import frame_image_name
    from core.data.patient_context import PatientContext
    from core.io.intake import ImageRejected, load_frames

    context, stem = context or PatientContext(), Path(name).stem
    try:
        frames, tags = load_frames(data, name)
        context = context if context.given else tags
    except ImageRejected as exc:
        return [_blank_row(name, stem, true_dx, context) | {"error": str(exc)}]
    except Exception as exc:  # a file no reader expected must not end the batch
        return [_blank_row(name, stem, true_dx, context) | {"error": f"analysis failed: {exc}"}]
    if len(frames) == 1:
        return [_analysed_row(frames[0], name, stem, true_dx, context)]
    return [_analysed_row(rgb, f"{name} · frame {k}", frame_image_name(stem, k), true_dx, context)
            for k, rgb in enumerate(frames, 1)]


def _blank_row(file: str, image: str, true_dx: str, context) -> dict:
    from core.analysis.predict import blank_row

    return {"thumbnail": None, "file": file, "true_dx": true_dx or None, "uncertainty_text": None,
            **{m: None for m in MEASUREMENT_COLUMNS}, **blank_row(image, context)}


def _analysed_row(rgb, file: str, image: str, true_dx: str, context) -> dict:
    """One image's row; the referral uses the session's threshold when one is set."""
    from core.analysis.predict import result_row

    row = _blank_row(file, image, true_dx, context) | {"thumbnail": thumbnail_data_uri(rgb)}
    try:
        with pool().borrow() as analyzer:
            r = analyzer.analyze(rgb, context=context)
            version = analyzer.card.model_version
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
    from core.data.patient_context import PatientContext

    rows = []
    for i, (name, read, true_dx) in enumerate(items):
        progress(i, name)
        context = contexts.get(Path(name).stem) or PatientContext()
        try:
            data = read()
        except OSError as exc:
            rows.append(_blank_row(name, Path(name).stem, true_dx, context) | {"error": f"cannot read: {exc}"})
            continue
        rows.extend(file_rows(data, name, true_dx, context))
    return pd.DataFrame(rows)
