"""The PDF report of one analysis as the Analyze page offers it (core.report.build_pdf_report with the images and
captions the page shows)."""
from __future__ import annotations

import numpy as np

from ui.images import mask_overlay
from ui.model_files import headline_metrics, model_card


def build_report(rgb: np.ndarray, result, mask: np.ndarray, measurements: dict, cam_image: np.ndarray | None,
                 cam_caption: str, note: str = "") -> bytes:
    """PDF bytes for one core.inference.AnalysisResult: `mask` = the mask shown, `cam_image` = the CAM overlay shown
    (or None) with its caption."""
    from core.report import build_pdf_report

    card = model_card() or {}
    return build_pdf_report(
        image_rgb=rgb, overlay_rgb=mask_overlay(rgb, mask), cam_rgb=cam_image, cam_caption=cam_caption,
        probs=result.probs, label=result.label, uncertainty=result.uncertainty, ood=result.ood,
        ood_reason=result.ood_reason, measurements=measurements,
        model_info={"version": card.get("version", "unknown"), "created": card.get("created", "unknown"),
                    "metrics": headline_metrics(card)},
        clinician_note=note,
    )
