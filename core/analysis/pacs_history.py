"""A lesion history from the PACS: a patient's studies (QIDO-RS), their dermoscopy images (WADO-RS) grouped into
lesions by what their tags say (body site, laterality, series description), one lesion's images as dated visits
(the study date), and the history's findings stored back as a DICOM SR in the newest study (STOW-RS, once).

    lesions, problems = patient_lesions(pacs, "DEMO-H01")
    history = lesion_history(analyzer, visits_of(lesions[0]), band)
    outcome = store_history(pacs, lesions[0], history_objects(history, lesions[0], result_findings))

Nothing retrieved is written to disk. A study without dermoscopy images is skipped; an image that cannot be read is
named in the problems, in words. One image per lesion and study is a visit (the lowest instance number): several
photographs of one visit are not a history.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from core.analysis.followup import BEYOND, WITHIN
from core.io.dicom_input import DicomImage, read_dicom
from core.io.dicom_results import Findings, SeriesFindings, findings_report, part10_bytes, source_header
from core.io.intake import ImageRejected
from core.io.pacs import Instance, Pacs, PacsError, StoreOutcome, Study

NO_TAG = "not stated"


@dataclass(frozen=True)
class PacsVisit:
    study: Study
    instance: Instance
    data: bytes          # the Part 10 bytes (memory only)
    image: DicomImage

    @property
    def date(self) -> dt.date | None:
        return self.image.taken or _study_date(self.study.date)


@dataclass(frozen=True)
class LesionSeries:
    """The images of one lesion of a patient, one per study, oldest first."""
    site: str
    laterality: str
    description: str
    visits: tuple[PacsVisit, ...]

    @property
    def label(self) -> str:
        return (f"{self.site} · {self.laterality} · {self.description} — {len(self.visits)} visit(s)")


def _study_date(text: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except (TypeError, ValueError):
        return None


def patient_lesions(pacs: Pacs, patient_id: str) -> tuple[list[LesionSeries], list[str]]:
    """(the patient's lesions with two or more dated visits first, then the others; sentences about what was
    skipped). PacsError when the PACS cannot be searched."""
    if not patient_id.strip():
        raise PacsError("Enter a patient ID to find the patient's studies")
    studies = pacs.search_studies(patient_id=patient_id.strip())
    groups: dict[tuple[str, str, str], dict[str, PacsVisit]] = {}
    problems = []
    for study in studies:
        try:
            instances = pacs.dermoscopy_instances(study.study_uid)
        except PacsError:
            continue  # a study of other images (another modality) is not part of a dermoscopy history
        for instance in sorted(instances, key=lambda i: (i.number, i.sop_uid)):
            data = pacs.retrieve(instance.study_uid, instance.series_uid, instance.sop_uid)
            try:
                image = read_dicom(data, f"instance {instance.number}")
            except ImageRejected as exc:
                problems.append(f"Study of {study.date or 'no date'}, image {instance.number}: {exc}")
                continue
            tags = image.lesion
            key = (tags.get("site", NO_TAG), tags.get("laterality", NO_TAG), tags.get("series", NO_TAG))
            visit = PacsVisit(study, instance, data, image)
            if visit.date is None:
                problems.append(f"Image {instance.number} of a study without a date was left out.")
                continue
            groups.setdefault(key, {}).setdefault(study.study_uid, visit)
    lesions = [LesionSeries(*key, tuple(sorted(by_study.values(), key=lambda v: v.date)))
               for key, by_study in groups.items()]
    return sorted(lesions, key=lambda s: (len(s.visits) < 2, s.label)), problems


def visits_of(series: LesionSeries):
    """The series as core.analysis.lesion_history.Visits (the first frame; pixel size from PixelSpacing)."""
    from core.analysis.lesion_history import Visit

    return [Visit(v.image.frames[0], v.date, f"{v.date.isoformat()} · image {v.instance.number}",
                  v.image.mm_per_pixel) for v in series.visits]


def series_findings(history, series: LesionSeries) -> SeriesFindings:
    """What the SR states about the history (core.analysis.lesion_history.LesionHistory) of ``series``."""
    change = history.first_change()
    newest = history.visits[-1]
    if len(history.doubted()) == len(history.visits) - 1 or newest.doubt:
        verdict = "not_compared"
    else:
        verdict = "stable" if change is None else "changed"
    diameter = next(c for c in newest.to_first.changes if c.measure.key == "max_diameter")
    assessed = diameter.status in (WITHIN, BEYOND)
    return SeriesFindings(len(history.visits), history.days, verdict, change[0] if change else None,
                          diameter.change if assessed else None,
                          tuple(v.instance.sop_uid for v in series.visits))


def history_objects(history, series: LesionSeries, findings: Findings) -> list[bytes]:
    """The history SR (Part 10 bytes) of the newest visit: ``findings`` are that image's (Findings.of its analysis
    with the referral applied), the series findings are the history's."""
    header = source_header(series.visits[-1].data)
    return [part10_bytes(findings_report(header, findings, series_findings(history, series)))]


def store_history(pacs: Pacs, series: LesionSeries, objects: list[bytes]) -> StoreOutcome:
    """STOW-RS into the newest visit's study of what it does not hold yet (a retry stores nothing twice)."""
    return pacs.store_new(objects, series.visits[-1].study.study_uid)
