"""The PDF report of one analysis as the Analyze page offers it (core.reports.report.build_pdf_report with the images,
captions, referral threshold and patient context the page shows)."""
from __future__ import annotations

from datetime import date

import numpy as np

from ui.formatting import class_label, context_use_text
from ui.images import mask_overlay
from ui.model_files import headline_metrics, model_card
from ui.referral import referral_of, verdict_of


def build_report(rgb: np.ndarray, result, mask: np.ndarray | None, measurements: dict, cam_image: np.ndarray | None,
                 cam_caption: str, note: str = "", context=None, *, image_data: bytes, exam_date: date | None = None,
                 lesion_label: str = "") -> bytes:
    """PDF bytes for one core.analysis.inference.AnalysisResult: `mask` = the mask shown (None: not dermoscopy), `cam_image` = the CAM overlay shown
    (or None) with its caption, `context` = the core.data.patient_context.PatientContext entered (or None). The referral
    uses the session's threshold when one is set, and the PDF says which. The PDF is filed by the ID of
    `image_data` (the file's bytes; its name is never printed), `exam_date` (a DICOM study date; None: the date of
    the analysis) and the user's `lesion_label`."""
    from core.reports.report import build_pdf_report, image_id

    card = model_card()
    referral = referral_of(result)
    similar = [] if result.similar is None else [
        (row.image_id, class_label(row.dx), row.confirmed_by, float(row.similarity))
        for row in result.similar.itertuples(index=False)]
    given = context is not None and context.given
    return build_pdf_report(
        image_rgb=rgb, overlay_rgb=None if mask is None else mask_overlay(rgb, mask), cam_rgb=cam_image, cam_caption=cam_caption,
        probs=result.probs, label=result.label, ood_level=result.ood_level, ood_reason=result.ood_reason,
        uncertainty_text=result.uncertainty_text,
        referral={"text": referral.text, "numbers": referral.numbers, "threshold_note": referral.threshold_note},
        verdict=verdict_of(result).text, quality_text=result.quality_text,
        similar_cases=similar, patient_context=context.rows() if given else [],
        context_note=context_use_text(card) if given else "", measurements=measurements,
        model_info={"version": card.version, "created": card.display("created"), "metrics": headline_metrics(card)},
        clinician_note=note, image_id=image_id(image_data), exam_date=exam_date, lesion_label=lesion_label,
    )
