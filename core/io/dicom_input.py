"""DICOM intake: untrusted DICOM bytes in, HxWx3 uint8 RGB frames and the patient context from the tags out.

    image = read_dicom(data)            # DicomImage: .frames, .context, .notes, .uids
    data = wrap_jpeg(jpeg, patient)     # a dermoscopy JPEG as a DICOM Dermoscopic Photography Image (tests, demo PACS)

Accepted: photographic colour images (Dermoscopic Photography 'DMS', VL Photographic 'XC', secondary capture 'OT'
and the other VL / photographic storage classes), RGB or YBR_FULL / YBR_FULL_422, uncompressed or JPEG baseline
(pydicom's Pillow decoder; other transfer syntaxes are refused by name). Multi-frame objects give one image per frame. Everything else raises DicomRejected (an
core.io.intake.ImageRejected): a DICOMDIR, a non-image object (report, PDF, segmentation...), a non-photographic
modality (CT, MR, ...), a monochrome image, declared sizes over the limits (checked from the header, before any
pixel is decoded), a 0x0 image, a truncated or damaged file.

Patient context: age from PatientAge (nnnY / M / W / D), else from PatientBirthDate and the study (or content)
date; sex from PatientSex (M / F; O or empty -> not given); site from the Anatomic Region Sequence (SNOMED CT code or
its meaning) or BodyPartExamined, mapped onto the HAM10000 vocabulary of core.data.patient_context (unmapped -> not
given, with a note saying which value was not mapped). Identifying tags (name, ID, birth date, accession number,
institution, physicians) are returned only with include_identifiers=True; nothing is logged (the "pydicom" logger is
capped at INFO, its DEBUG records print tag values) and nothing is written to disk.
"""
from __future__ import annotations

import datetime as dt
import io
import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, DermoscopicPhotographyImageStorage, JPEGBaseline8Bit, generate_uid

from core.io.image_limits import DICOM_PREAMBLE, MAX_BYTES, MAX_PIXELS, MIN_SIDE, ImageRejected, is_dicom
from core.data.patient_context import PatientContext

_LOGGER = logging.getLogger("pydicom")
if _LOGGER.level < logging.INFO:
    _LOGGER.setLevel(logging.INFO)

MAX_FRAMES = 64
#: Storage SOP classes of photographic colour images (PS3.4 B.5).
PHOTO_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.7": "Dermoscopic Photography Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.2": "VL Microscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.3": "VL Slide-Coordinates Microscopic Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
}
PHOTO_MODALITIES = ("DMS", "XC", "OT", "GM", "ES", "SM")
COLOUR_INTERPRETATIONS = ("RGB", "YBR_FULL", "YBR_FULL_422")
#: Transfer syntaxes decoded here: uncompressed little endian and JPEG baseline (Pillow); others are refused.
TRANSFER_SYNTAXES = {"1.2.840.10008.1.2": "Implicit VR Little Endian", "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
                     "1.2.840.10008.1.2.4.50": "JPEG Baseline"}
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: Tags that identify a person or an encounter; only returned with include_identifiers=True.
IDENTIFYING_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "AccessionNumber",
                    "InstitutionName", "ReferringPhysicianName", "OperatorsName", "StudyID")

#: SNOMED CT codes (DICOM CID 4031 / 4028) and their meanings -> the HAM10000 site vocabulary.
SITE_CODES = {
    "818983003": "abdomen", "77568009": "back", "51185008": "chest", "117590005": "ear", "89545001": "face",
    "56459004": "foot", "85562004": "hand", "45048000": "neck", "41695006": "scalp", "22943007": "trunk",
    "53120007": "upper extremity", "61685007": "lower extremity", "21547004": "acral", "57999000": "acral",
}
#: BodyPartExamined defined terms and code meanings (upper case, spaces and underscores removed) -> site.
SITE_TERMS = {
    "ABDOMEN": "abdomen", "BACK": "back", "CHEST": "chest", "THORAX": "chest", "BREAST": "chest", "EAR": "ear",
    "FACE": "face", "FOOT": "foot", "HAND": "hand", "NECK": "neck", "SCALP": "scalp", "TRUNK": "trunk",
    "GENITAL": "genital", "GENITALIA": "genital", "ACRAL": "acral", "PALM": "acral", "SOLE": "acral",
    "SOLEOFFOOT": "acral", "PALMOFHAND": "acral",
    "UPPEREXTREMITY": "upper extremity", "UPREXTREMITY": "upper extremity", "UPPERLIMB": "upper extremity",
    "ARM": "upper extremity", "UPPERARM": "upper extremity", "FOREARM": "upper extremity",
    "ELBOW": "upper extremity", "WRIST": "upper extremity", "SHOULDER": "upper extremity",
    "LOWEREXTREMITY": "lower extremity", "LWREXTREMITY": "lower extremity", "LOWERLIMB": "lower extremity",
    "LEG": "lower extremity", "LOWERLEG": "lower extremity", "THIGH": "lower extremity", "KNEE": "lower extremity",
    "ANKLE": "lower extremity",
}
#: site -> (BodyPartExamined, SNOMED CT code, meaning) written by wrap_jpeg.
SITE_WRITE = {
    "abdomen": ("ABDOMEN", "818983003", "Abdomen"), "back": ("BACK", "77568009", "Back"),
    "chest": ("CHEST", "51185008", "Thorax"), "ear": ("EAR", "117590005", "Ear"), "face": ("FACE", "89545001", "Face"),
    "foot": ("FOOT", "56459004", "Foot"), "hand": ("HAND", "85562004", "Hand"), "neck": ("NECK", "45048000", "Neck"),
    "scalp": ("SCALP", "41695006", "Scalp"), "trunk": ("TRUNK", "22943007", "Trunk"),
    "upper extremity": ("UPPER EXTREMITY", "53120007", "Upper limb"),
    "lower extremity": ("LOWER EXTREMITY", "61685007", "Lower limb"),
}


class DicomRejected(ImageRejected):
    """A DICOM file that cannot be analysed; reasons add not_photo (modality / SOP class) and dicomdir."""


@dataclass
class DicomImage:
    frames: list[np.ndarray]                      # each HxWx3 uint8 RGB
    context: PatientContext
    notes: list[str] = field(default_factory=list)  # sentences about what was not mapped
    uids: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, SOPClassUID
    identifiers: dict[str, str] = field(default_factory=dict)  # only with include_identifiers=True
    mm_per_pixel: float | None = None    # from PixelSpacing (square pixels only)
    taken: dt.date | None = None         # the visit: StudyDate, else AcquisitionDateTime, ContentDate, SeriesDate
    lesion: dict[str, str] = field(default_factory=dict)  # which lesion: site, laterality, series description


def file_header(path, max_pixels: int = MAX_PIXELS) -> tuple[int, PatientContext]:
    """(how many images, the patient context of the tags) of a file, from its DICOM header alone (no pixel data is
    read or decoded): (1, empty) for any other file, for a header that cannot be read, and a count of 1 for a file
    whose frames exceed the limits of read_dicom (too_many_pixels: it then rejects the file in words)."""
    try:
        with open(path, "rb") as handle:
            if not is_dicom(handle.read(DICOM_PREAMBLE + 4)):
                return 1, PatientContext()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        within = _within_limits(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), frames, max_pixels)
        return (frames if 1 < frames and within else 1), _context(ds)[0]
    except Exception:  # noqa: BLE001 - the analysis reads the file again and says what is wrong with it
        return 1, PatientContext()


def read_dicom(data: bytes, name: str = "", *, include_identifiers: bool = False, max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> DicomImage:
    """Parse untrusted DICOM bytes into RGB frames and a patient context, or raise DicomRejected."""
    if len(data) > max_bytes:
        raise DicomRejected("The DICOM file is larger than the upload limit", "too_many_bytes", name)
    if not is_dicom(data):
        raise DicomRejected("This file is not a DICOM file", "not_image", name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
            _check_header(ds, name, max_pixels, min_side)
            frames = _frames(ds, name)
            context, notes = _context(ds)
        except ImageRejected:
            raise
        except Exception as exc:  # noqa: BLE001 - any parser / decoder failure means the file cannot be used
            raise DicomRejected("The DICOM file is damaged or truncated", "damaged", name) from exc
    uids = {key: str(ds.get(key, "")) for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                                  "SOPClassUID")}
    identifiers = {key: str(ds.get(key, "")) for key in IDENTIFYING_TAGS} if include_identifiers else {}
    return DicomImage(frames, context, notes, uids, identifiers, pixel_spacing_mm(ds, notes), visit_date(ds),
                      lesion_tags(ds, context))


#: PixelSpacing values further apart than this (relative) are not square pixels: no millimetres are derived.
SQUARE_TOLERANCE = 0.01


def pixel_spacing_mm(ds: Dataset, notes: list[str] | None = None) -> float | None:
    """Millimetres per pixel from PixelSpacing (row spacing \\ column spacing, mm); None when absent, not positive or
    not square (a note says why for the last two)."""
    try:
        values = [float(v) for v in (ds.get("PixelSpacing") or [])]
    except (TypeError, ValueError):
        values = []
    if len(values) != 2:
        return None
    row, column = values
    if not (row > 0 and column > 0 and np.isfinite(row) and np.isfinite(column)):
        if notes is not None:
            notes.append("The PixelSpacing tag is not a positive size; sizes are in pixels.")
        return None
    if abs(row - column) > SQUARE_TOLERANCE * max(row, column):
        if notes is not None:
            notes.append(f"The pixels are not square (PixelSpacing {row:g} x {column:g} mm); sizes are in pixels.")
        return None
    return (row + column) / 2


def visit_date(ds: Dataset) -> dt.date | None:
    """The date the image was taken: StudyDate, else AcquisitionDateTime, ContentDate, SeriesDate."""
    for key in ("StudyDate", "AcquisitionDateTime", "ContentDate", "SeriesDate"):
        found = _date(ds.get(key, ""))
        if found:
            return found
    return None


def lesion_tags(ds: Dataset, context: PatientContext) -> dict[str, str]:
    """What tells one lesion of a patient from another: the body site (mapped, else as written), the laterality
    (ImageLaterality, else Laterality; "U" = unpaired / unknown is left out) and the series description."""
    site = context.site or str(ds.get("BodyPartExamined", "")).strip().lower()
    laterality = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "")).strip().upper()
    tags = {"site": site, "laterality": {"L": "left", "R": "right", "B": "both"}.get(laterality, ""),
            "series": str(ds.get("SeriesDescription", "")).strip()}
    return {key: value for key, value in tags.items() if value}


def _check_header(ds: Dataset, name: str, max_pixels: int, min_side: int) -> None:
    media_class = str(getattr(ds.get("file_meta", Dataset()), "MediaStorageSOPClassUID", ""))
    if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise DicomRejected("This is a DICOMDIR (a media index), not an image; open one of the images it lists",
                            "dicomdir", name)
    sop_class = str(ds.get("SOPClassUID", "") or media_class)
    modality = str(ds.get("Modality", "")).upper()
    if "PixelData" not in ds:
        kind = UID(sop_class).name if sop_class else "object"
        raise DicomRejected(f"This DICOM file holds no image ({kind})", "not_image", name)
    if sop_class not in PHOTO_SOP_CLASSES or (modality and modality not in PHOTO_MODALITIES):
        kind = modality or UID(sop_class).name
        raise DicomRejected(f"This DICOM image is not a photograph (modality {kind}); only dermoscopy / "
                            "photographic images can be analysed", "not_photo", name)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax not in TRANSFER_SYNTAXES:
        raise DicomRejected(f"This DICOM image is compressed as {UID(syntax).name or 'an unknown transfer syntax'}, "
                            f"which is not supported (use {', '.join(TRANSFER_SYNTAXES.values())})",
                            "unsupported_format", name)
    interpretation = str(ds.get("PhotometricInterpretation", "")).upper()
    if int(ds.get("SamplesPerPixel", 0) or 0) != 3 or interpretation not in COLOUR_INTERPRETATIONS:
        raise DicomRejected(f"This DICOM image is not a colour photograph ({interpretation or 'no colour model'})",
                            "unsupported_mode", name)
    if int(ds.get("BitsAllocated", 0) or 0) != 8:
        raise DicomRejected("Only 8-bit colour DICOM images are supported", "unsupported_mode", name)
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows == 0 or columns == 0:
        raise DicomRejected("The DICOM image has no pixels (0x0)", "too_small", name)
    if not _within_limits(rows, columns, frames, max_pixels):
        raise DicomRejected("The DICOM image is larger than the limit "
                            f"({max_pixels / 1e6:g} megapixels in all, {MAX_FRAMES} frames)", "too_many_pixels", name)
    if min(rows, columns) < min_side:
        raise DicomRejected(f"Image is too small (minimum {min_side} px per side)", "too_small", name)


def _within_limits(rows: int, columns: int, frames: int, max_pixels: int) -> bool:
    """The one size rule of a DICOM (read_dicom and file_header): at most MAX_FRAMES frames and max_pixels over all of
    them together, so a file decodes to no more RGB than the largest single image."""
    return frames <= MAX_FRAMES and rows * columns * frames <= max_pixels


def _frames(ds: Dataset, name: str) -> list[np.ndarray]:
    array = ds.pixel_array  # pydicom converts YBR to RGB (as_rgb)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if count == 1:
        array = array[None]
    if array.ndim != 4 or array.shape[0] != count or array.shape[3] != 3 or array.dtype != np.uint8:
        raise DicomRejected("The DICOM file is damaged or truncated", "damaged", name)
    return [np.ascontiguousarray(frame) for frame in array]


def _context(ds: Dataset) -> tuple[PatientContext, list[str]]:
    notes: list[str] = []
    age = _age(ds, notes)
    sex = {"M": "male", "F": "female"}.get(str(ds.get("PatientSex", "")).strip().upper())
    site = _site(ds, notes)
    return PatientContext(age=age, sex=sex, site=site), notes


def _age(ds: Dataset, notes: list[str]) -> float | None:
    text = str(ds.get("PatientAge", "")).strip().upper()
    if len(text) == 4 and text[:3].isdigit() and text[3] in "YMWD":
        years = int(text[:3]) / {"Y": 1, "M": 12, "W": 52.1775, "D": 365.25}[text[3]]
        return round(years, 1) if years <= 120 else None
    birth = _date(ds.get("PatientBirthDate", ""))
    taken = _date(ds.get("StudyDate", "")) or _date(ds.get("ContentDate", ""))
    if birth and taken and taken >= birth:
        years = taken.year - birth.year - ((taken.month, taken.day) < (birth.month, birth.day))
        return float(years) if years <= 120 else None
    if text:
        notes.append(f"The patient age {text!r} in the DICOM tags is not a DICOM age; age left empty.")
    return None


def _date(value) -> dt.date | None:
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def _norm(text: str) -> str:
    return "".join(ch for ch in str(text).upper() if ch.isalnum())


def _site(ds: Dataset, notes: list[str]) -> str | None:
    seen = []
    for item in ds.get("AnatomicRegionSequence", []) or []:
        code, meaning = str(item.get("CodeValue", "")), str(item.get("CodeMeaning", ""))
        site = SITE_CODES.get(code) or SITE_TERMS.get(_norm(meaning))
        if site:
            return site
        seen.append(meaning or code)
    part = str(ds.get("BodyPartExamined", "")).strip()
    if part:
        site = SITE_TERMS.get(_norm(part))
        if site:
            return site
        seen.append(part)
    if seen:
        notes.append(f"The body site {', '.join(repr(s) for s in seen)} has no HAM10000 equivalent; site left empty.")
    return None


@dataclass(frozen=True)
class MadeUpPatient:
    """A made-up patient and study for wrap_jpeg (tests, the demo PACS): never a real person."""
    patient_id: str
    name: str = "Demo^Patient"
    age: int | None = None
    sex: str | None = None                # "male" / "female"
    site: str | None = None               # HAM10000 vocabulary
    study_uid: str = ""
    study_date: str = "20260101"
    accession: str = ""
    laterality: str = "U"                 # ImageLaterality: L / R / U
    series_description: str = ""
    mm_per_pixel: float | None = None     # written as PixelSpacing


def wrap_jpeg(jpeg: bytes, patient: MadeUpPatient, *, series_uid: str = "", sop_uid: str = "",
              instance_number: int = 1) -> bytes:
    """A dermoscopy JPEG (bytes kept as they are) as a DICOM Dermoscopic Photography Image (modality DMS)."""
    from PIL import Image, JpegImagePlugin
    with Image.open(io.BytesIO(jpeg), formats=("JPEG",)) as img:
        width, height = img.size
        subsampled = JpegImagePlugin.get_sampling(img) != 0
        if img.mode != "RGB":
            raise ValueError("wrap_jpeg needs a colour (3-component) JPEG")
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DermoscopicPhotographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DermoscopicPhotographyImageStorage, sop_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName, ds.PatientID = patient.name, patient.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = {"male": "M", "female": "F"}.get(patient.sex or "", "")
    if patient.age is not None:
        ds.PatientAge = f"{int(patient.age):03d}Y"
    ds.StudyInstanceUID = patient.study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = patient.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AcquisitionDateTime = patient.study_date + "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID, ds.AccessionNumber = "1", patient.accession
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DMS", 1, instance_number
    ds.Manufacturer, ds.ManufacturerModelName = "LesionLens demo", "made-up dermatoscope"
    ds.DeviceSerialNumber, ds.SoftwareVersions = "0", "1"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = generate_uid(), ""
    ds.LightSourcePolarization = ds.EmitterColorTemperature = ds.ContactMethod = ""
    ds.OpticalMagnificationFactor = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ""
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.AcquisitionContextSequence = []
    ds.ImageLaterality = patient.laterality
    if patient.series_description:
        ds.SeriesDescription = patient.series_description
    if patient.mm_per_pixel:
        ds.PixelSpacing = [f"{patient.mm_per_pixel:.6g}"] * 2
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    if patient.site in SITE_WRITE:
        part, code, meaning = SITE_WRITE[patient.site]
        ds.BodyPartExamined = part
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = code, "SCT", meaning
        ds.AnatomicRegionSequence = [region]
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422" if subsampled else "YBR_FULL"
    ds.Rows, ds.Columns = height, width
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()

