"""An analysis back into the image archive as DICOM: the PDF report, the lesion mask and the findings of one source
image, each a new instance in the source's study (its own series), referencing the source instance.

    header = source_header(data)                             # the source's tags (no pixels), from its Part 10 bytes
    findings = Findings.of(result, refer, threshold, model_version)   # what the SR says
    objects = result_objects(header, findings, pdf=pdf_bytes, mask=result.mask)   # [PDF, SEG, SR] as Part 10 bytes

- Encapsulated PDF (modality DOC): the app's PDF report, byte for byte (EncapsulatedDocumentLength gives its length;
  DICOM pads odd lengths with one 0x00).
- Segmentation (highdicom, BINARY, one segment "Lesion"): the mask at the source's resolution, pixel for pixel.
- Comprehensive SR, TID 1500 Measurement Report (highdicom): one measurement group with the class probabilities,
  the melanoma score and the referral threshold (measurements, unit "no units"), the most probable class, the
  referral decision, the uncertainty level and the image check (qualitative evaluations, codes of the local scheme
  99LESIONLENS) and the model version (Algorithm Identification).

A lesion history (core.analysis.pacs_history) adds one more SR to the newest visit's study: the findings SR of the
newest image with the history's visits, days, first changed visit, diameter change and a coded verdict
(``findings_report(..., series=SeriesFindings)``; series 9704, its UID hashing every visit's image UID too).

Images that are not dermoscopy (core.decisions.ood refused levels) get the PDF only: it says why there is no diagnosis, and a
mask or findings would be one.

UIDs are deterministic: the SOP Instance UID hashes the source's SOP Instance UID, the model version, the object kind
(and for the PDF and the SR, the referral threshold that decides the referral they state); the series UID hashes the
study, the model version and the kind. Storing the same analysis twice therefore stores one instance (the PACS keeps
the first), and every LesionLens result of a model version sits in three series of the study. Patient and study
tags are copied from the source (the archive files them by these tags); nothing else identifying is added.
"""
from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian, generate_uid

from core.data.classes import CLASS_BY_CODE, CLASS_CODES
from core.io.dicom_input import PHOTO_SOP_CLASSES
from core.decisions.uncertainty import LEVELS

MANUFACTURER = "LesionLens"
SCHEME = "99LESIONLENS"  # local coding scheme (PS3.16 8.2: designators starting with 99 are private)
KINDS = {  # kind -> (series number, series description, modality)
    "report": (9701, "LesionLens report (PDF)", "DOC"),
    "mask": (9702, "LesionLens lesion mask", "SEG"),
    "findings": (9703, "LesionLens findings", "SR"),
    "history": (9704, "LesionLens lesion history", "SR"),
}
IMAGE_CHECKS = ("in", "unusual", "maybe_clinical_photo")  # core.decisions.ood levels that still get a diagnosis
NO_UNITS = codes.UCUM.NoUnits


def _code(value: str, meaning: str) -> Code:
    return Code(value, SCHEME, meaning)


PROBABILITY = {c: _code(f"P-{c.upper()}", f"Probability of {CLASS_BY_CODE[c].name}") for c in CLASS_CODES}
CLASS_CONCEPTS = {c: _code(c.upper(), CLASS_BY_CODE[c].name) for c in CLASS_CODES}
MELANOMA_SCORE = _code("MEL-SCORE", "Melanoma referral score")
REFERRAL_THRESHOLD = _code("REF-THRESHOLD", "Melanoma referral threshold")
MOST_PROBABLE = _code("TOP-CLASS", "Most probable class")
REFERRAL = _code("REFERRAL", "Referral decision")
REFERRAL_VALUES = {True: _code("REFER", "Refer to a dermatologist"),
                   False: _code("NO-REFER", "Below the referral threshold")}
UNCERTAINTY = _code("UNCERTAINTY", "Uncertainty level")
UNCERTAINTY_VALUES = {level: _code(level.upper(), f"{level.capitalize()} uncertainty") for level in LEVELS}
IMAGE_CHECK = _code("IMAGE-CHECK", "Image check")
IMAGE_CHECK_VALUES = {"in": _code("TYPICAL", "Typical dermoscopy image"),
                      "unusual": _code("UNUSUAL", "Unusual image: interpret with care"),
                      "maybe_clinical_photo": _code("MAYBE-CAMERA", "May be a camera photo: interpret with care")}


VISITS = _code("VISITS", "Visits in the lesion history")
DAYS = _code("DAYS", "Days since the first visit")
DIAMETER_CHANGE = _code("DIAMETER-CHANGE", "Maximum diameter change since the first visit")
SERIES_VERDICT = _code("SERIES-VERDICT", "Lesion history verdict")
SERIES_VERDICT_VALUES = {"stable": _code("STABLE", "No change beyond the measurement noise"),
                         "changed": _code("CHANGED", "Changed beyond the measurement noise"),
                         "not_compared": _code("NOT-COMPARED", "Not compared: may not be the same lesion")}
FIRST_CHANGE = _code("FIRST-CHANGE-VISIT", "Visit of the first change")


class DicomResultError(ValueError):
    """A result object that cannot be built from what was given; str(exc) says what is wrong."""


@dataclass(frozen=True)
class Findings:
    """What the Structured Report states about one analysed image."""
    probabilities: dict[str, float]   # every class code -> probability (sum 1)
    label: str                        # the most probable class
    melanoma_score: float
    refer: bool
    referral_threshold: float
    uncertainty_level: str            # core.decisions.uncertainty.LEVELS
    image_check: str                  # IMAGE_CHECKS
    model_version: str

    def __post_init__(self):
        if set(self.probabilities) != set(CLASS_CODES):
            raise DicomResultError(f"findings need a probability for each of {', '.join(CLASS_CODES)}")
        values = np.array([self.probabilities[c] for c in CLASS_CODES], dtype=float)
        if not np.all((values >= 0) & (values <= 1)) or abs(values.sum() - 1) > 1e-3:
            raise DicomResultError("class probabilities must lie in [0, 1] and sum to 1")
        if self.label != max(self.probabilities, key=self.probabilities.get):
            raise DicomResultError(f"{self.label!r} is not the most probable class")
        if not (0 <= self.melanoma_score <= 1 and 0 <= self.referral_threshold <= 1):
            raise DicomResultError("the melanoma score and the referral threshold must lie in [0, 1]")
        if self.uncertainty_level not in LEVELS:
            raise DicomResultError(f"uncertainty level {self.uncertainty_level!r} is not one of {', '.join(LEVELS)}")
        if self.image_check not in IMAGE_CHECKS:
            raise DicomResultError(f"no findings for an image whose check says {self.image_check!r}")
        if not self.model_version:
            raise DicomResultError("findings need the model version")

    @classmethod
    def of(cls, result, refer: bool, threshold: float, model_version: str) -> "Findings":
        """The findings of a core.analysis.inference.AnalysisResult with the referral applied (the page's, which may use the
        session's threshold)."""
        return cls({c: float(result.probs[c]) for c in CLASS_CODES}, result.label, float(result.mel_score),
                   bool(refer), float(threshold), result.uncertainty_level, result.ood_level, model_version)


def source_header(data: bytes) -> Dataset:
    """The tags of a source image (Part 10 bytes), pixels left out; DicomResultError unless it is a single-frame
    photographic image with the UIDs a result must reference."""
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure: not a usable source
        raise DicomResultError("the source image's DICOM header cannot be read") from exc
    if str(header.get("SOPClassUID", "")) not in PHOTO_SOP_CLASSES:
        raise DicomResultError("results are stored only for photographic (dermoscopy) images")
    if int(header.get("NumberOfFrames", 1) or 1) != 1:
        raise DicomResultError("results of multi-frame images cannot be stored yet (one result per frame is needed)")
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Rows", "Columns"):
        if not header.get(key):
            raise DicomResultError(f"the source image has no {key}")
    return header


def result_uid(*parts: str) -> str:
    """A UID derived from `parts` only (pydicom's hash-based UID): the same parts always give the same UID."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def instance_uid(source: Dataset, kind: str, model_version: str, threshold: float | None = None) -> str:
    """The SOP Instance UID of the `kind` result of `source` by this model (and referral threshold)."""
    extra = [] if threshold is None else [f"{threshold:.6f}"]
    return result_uid(source.SOPInstanceUID, model_version, kind, *extra)


def series_uid(source: Dataset, kind: str, model_version: str) -> str:
    """The series of the study that holds every `kind` result of this model version."""
    return result_uid(source.StudyInstanceUID, model_version, kind, "series")


def part10_bytes(ds: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file in memory."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def encapsulated_pdf(source: Dataset, pdf: bytes, model_version: str, threshold: float | None) -> Dataset:
    """The PDF report as an Encapsulated PDF instance in the source's study."""
    if not pdf.startswith(b"%PDF-"):
        raise DicomResultError("the report is not a PDF document")
    number, description, modality = KINDS["report"]
    sop_uid = instance_uid(source, "report", model_version, threshold)
    now = dt.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = EncapsulatedPDFStorage, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 192")
    ds.SOPClassUID, ds.SOPInstanceUID = EncapsulatedPDFStorage, sop_uid
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber"):  # Type 2: present, possibly empty
        setattr(ds, key, source.get(key, ""))
    for key in ("PatientAge", "StudyDescription", "IssuerOfPatientID"):
        if key in source:
            setattr(ds, key, source.get(key))
    ds.StudyInstanceUID = source.StudyInstanceUID
    ds.Modality, ds.SeriesInstanceUID = modality, series_uid(source, "report", model_version)
    ds.SeriesNumber, ds.SeriesDescription = number, description
    ds.Manufacturer, ds.SoftwareVersions = MANUFACTURER, model_version
    ds.ConversionType = "SYN"
    ds.InstanceNumber = int(source.get("InstanceNumber", 1) or 1)
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "NO"  # the report names no patient (core.reports.report)
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = "LesionLens analysis report"
    ds.ConceptNameCodeSequence = []
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    ds.SourceInstanceSequence = [reference]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds


def lesion_segmentation(source: Dataset, mask: np.ndarray, model_version: str) -> hd.seg.Segmentation:
    """The lesion mask (HxW, nonzero = lesion, the source's size) as a binary DICOM Segmentation of the source."""
    mask = np.asarray(mask)
    if mask.shape != (int(source.Rows), int(source.Columns)):
        raise DicomResultError(f"the mask is {mask.shape[1]}x{mask.shape[0]} px but the image is "
                               f"{source.Columns}x{source.Rows}: a segmentation must match its image")
    number, description, _ = KINDS["mask"]
    algorithm = hd.AlgorithmIdentificationSequence(name=MANUFACTURER, version=model_version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Lesion", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=mask > 0, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=series_uid(source, "mask", model_version),
        series_number=number, sop_instance_uid=instance_uid(source, "mask", model_version),
        instance_number=int(source.get("InstanceNumber", 1) or 1), manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER, software_versions=model_version, device_serial_number="0",
        series_description=description, content_label="LESION", content_description="Lesion mask",
        omit_empty_frames=False)
    seg.PatientOrientation = ""  # General Image module, Type 2C for images without a patient orientation
    return seg


@dataclass(frozen=True)
class SeriesFindings:
    """What the lesion-history SR adds to the newest visit's findings."""
    visits: int
    days: int
    verdict: str                       # a SERIES_VERDICT_VALUES key
    first_change_visit: int | None     # 1 = the first visit; None when stable or not compared
    diameter_change: float | None      # newest vs first visit, relative (0.18 = +18 %); None when not assessed
    visit_uids: tuple[str, ...]        # SOP Instance UIDs of every visit's image, oldest first

    def __post_init__(self):
        if self.verdict not in SERIES_VERDICT_VALUES:
            raise DicomResultError(f"series verdict {self.verdict!r} is not one of {', '.join(SERIES_VERDICT_VALUES)}")
        if self.visits < 2 or len(self.visit_uids) != self.visits:
            raise DicomResultError("a lesion history needs two or more visits, each with its image's UID")


def findings_report(source: Dataset, findings: Findings, series: SeriesFindings | None = None) -> hd.sr.ComprehensiveSR:
    """The findings as a Comprehensive SR (TID 1500 Measurement Report) referencing the source image; with
    ``series``, the lesion-history SR of the newest visit (its own series and UID: the visits' UIDs are part of it)."""
    version = findings.model_version
    kind = "findings" if series is None else "history"
    number, description, _ = KINDS[kind]
    algorithm = hd.sr.AlgorithmIdentification(name=MANUFACTURER, version=version)
    measurements = [hd.sr.Measurement(name=PROBABILITY[c], value=findings.probabilities[c], unit=NO_UNITS)
                    for c in CLASS_CODES]
    measurements += [hd.sr.Measurement(name=MELANOMA_SCORE, value=findings.melanoma_score, unit=NO_UNITS),
                     hd.sr.Measurement(name=REFERRAL_THRESHOLD, value=findings.referral_threshold, unit=NO_UNITS)]
    evaluations = [hd.sr.QualitativeEvaluation(MOST_PROBABLE, CLASS_CONCEPTS[findings.label]),
                   hd.sr.QualitativeEvaluation(REFERRAL, REFERRAL_VALUES[findings.refer]),
                   hd.sr.QualitativeEvaluation(UNCERTAINTY, UNCERTAINTY_VALUES[findings.uncertainty_level]),
                   hd.sr.QualitativeEvaluation(IMAGE_CHECK, IMAGE_CHECK_VALUES[findings.image_check])]
    sop_uid = instance_uid(source, "findings", version, findings.referral_threshold)
    if series is not None:
        measurements += [hd.sr.Measurement(name=VISITS, value=series.visits, unit=NO_UNITS),
                         hd.sr.Measurement(name=DAYS, value=series.days, unit=codes.UCUM.Day)]
        if series.first_change_visit is not None:
            measurements.append(hd.sr.Measurement(name=FIRST_CHANGE, value=series.first_change_visit, unit=NO_UNITS))
        if series.diameter_change is not None:
            measurements.append(hd.sr.Measurement(name=DIAMETER_CHANGE, value=100 * series.diameter_change,
                                                  unit=codes.UCUM.Percent))
        evaluations.append(hd.sr.QualitativeEvaluation(SERIES_VERDICT, SERIES_VERDICT_VALUES[series.verdict]))
        sop_uid = result_uid(source.SOPInstanceUID, version, kind, f"{findings.referral_threshold:.6f}",
                             *series.visit_uids)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=result_uid(source.SOPInstanceUID, "lesion"),
                                                     identifier="Lesion"),
        finding_type=codes.SCT.SkinLesion, algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)])
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid(MANUFACTURER, version, "device"), name=MANUFACTURER, model_name=version))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                                     procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=[group])
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=series_uid(source, kind, version),
        series_number=number, sop_instance_uid=sop_uid,
        instance_number=int(source.get("InstanceNumber", 1) or 1), manufacturer=MANUFACTURER,
        series_description=description, is_complete=True)
    scheme = Dataset()  # declares the local coding scheme of the concept names (SOP Common module)
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName = SCHEME, "LesionLens findings"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def result_objects(source: Dataset, findings: Findings | None, *, pdf: bytes, mask: np.ndarray | None,
                   model_version: str, threshold: float | None) -> list[bytes]:
    """Part 10 bytes of the results of one source image: the PDF, and for a dermoscopy image (findings and mask
    given) the SEG and the SR. `threshold`: the referral threshold the PDF states (None for a refused image)."""
    if (findings is None) != (mask is None):
        raise DicomResultError("a mask and findings go together: both (dermoscopy) or neither (refused image)")
    if findings is not None and findings.model_version != model_version:
        raise DicomResultError("the findings come from another model version")
    objects = [encapsulated_pdf(source, pdf, model_version, threshold)]
    if findings is not None:
        objects += [lesion_segmentation(source, mask, model_version), findings_report(source, findings)]
    return [part10_bytes(ds) for ds in objects]
