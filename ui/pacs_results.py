"""The PACS page's work, outside its layout: retrieve a study's dermoscopy images (WADO-RS), analyse them with the
app's Analyzer pool and the patient context of their tags, build their results as DICOM (the Analyze page's PDF,
the lesion mask, the findings: core.io.dicom_results) and store them back into the study (STOW-RS).

Everything stays in memory (the session state): nothing retrieved is written to disk. `store_results` is the one
place where results leave the app.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.io.dicom_input import DicomImage, read_dicom
from core.io.dicom_results import Findings, result_objects, source_header
from core.io.intake import ImageRejected
from core.io.pacs import Instance, Pacs, StoreOutcome
from ui.analyzers import pool
from ui.referral import referral_of
from ui.report import build_report


@dataclass(frozen=True)
class PacsImage:
    """One retrieved instance: its Part 10 bytes (memory only) and what core.io.dicom_input read from them, or the
    sentence saying why it cannot be analysed."""
    instance: Instance
    data: bytes
    image: DicomImage | None
    problem: str = ""

    @property
    def rgb(self) -> np.ndarray:
        return self.image.frames[0]


@dataclass(frozen=True)
class AnalysedImage:
    """An analysis of a PacsImage and its results as the PACS will hold them."""
    source: PacsImage
    result: object        # core.analysis.inference.AnalysisResult
    pdf: bytes            # the PDF report (ui.report.build_report), stored byte for byte
    objects: list[bytes]  # Part 10: Encapsulated PDF, and for dermoscopy the SEG and the SR


def retrieve(pacs: Pacs, instance: Instance, include_identifiers: bool = False) -> PacsImage:
    """WADO-RS of one instance, read as a DICOM image; a file that cannot be analysed keeps its reason."""
    data = pacs.retrieve(instance.study_uid, instance.series_uid, instance.sop_uid)
    try:
        return PacsImage(instance, data, read_dicom(data, f"instance {instance.number}",
                                                    include_identifiers=include_identifiers))
    except ImageRejected as exc:
        return PacsImage(instance, data, None, str(exc))


def analyse(image: PacsImage, note: str = "") -> AnalysedImage:
    """The Analyze page's analysis of the image's first frame with the patient context of its tags, its PDF report
    (without CAM) and the DICOM results (deterministic UIDs: the same analysis gives the same instances)."""
    rgb, context = image.rgb, image.image.context
    with pool().borrow() as analyzer:
        result = analyzer.analyze(rgb, context=context)
        version = analyzer.card.model_version
    shown = result.diagnosis_shown
    mask = result.mask if shown else None
    # filed by the study date and what the tags say tells this lesion from the patient's others
    pdf = build_report(rgb, result, mask, result.measurements if shown else {}, None, "", note, context,
                       image_data=image.data, exam_date=image.image.taken,
                       lesion_label=", ".join(image.image.lesion.values()))
    referral = referral_of(result)
    findings = Findings.of(result, referral.refer, referral.threshold, version) if shown else None
    objects = result_objects(source_header(image.data), findings, pdf=pdf, mask=mask, model_version=version,
                             threshold=referral.threshold if shown else None)
    return AnalysedImage(image, result, pdf, objects)


def store_results(pacs: Pacs, study_uid: str, analysed: list[AnalysedImage]) -> StoreOutcome:
    """STOW-RS of the results into their study; what the study already holds is not sent again."""
    return pacs.store_new([data for item in analysed for data in item.objects], study_uid)
