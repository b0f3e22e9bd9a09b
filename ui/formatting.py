"""Words and numbers as the pages show them: class names and colours, percentages, uncertainty, the measurement
table, CAM captions and the disclaimer."""
from __future__ import annotations

import pandas as pd

from core.classes import CLASS_BY_CODE, CLASSES, MALIGNANT_CODES

MALIGNANT_MARK = "▲"
MODEL_LABELS = {"mask_cn": "mask-CN (image + lesion mask)", "classifier": "Image-only classifier"}
SEG_LABELS = {"coarse_sn": "coarse-SN", "enhanced_sn": "enhanced-SN"}
SHORT_NAMES = {"akiec": "Actinic keratosis/IEC", "bcc": "Basal cell carcinoma", "bkl": "Benign keratosis",
               "df": "Dermatofibroma", "mel": "Melanoma", "nv": "Nevus", "vasc": "Vascular lesion"}
SHORT_NAME_COLOURS = {SHORT_NAMES[c.code]: c.color for c in CLASSES}

DISCLAIMER = (
    "**Decision support for health-care professionals — not a diagnosis.** LesionLens estimates class "
    "probabilities for a dermoscopic image from a research model trained on public data (HAM10000). It can be "
    "wrong, is not a medical device, and must never replace clinical examination, dermoscopy by a trained "
    "clinician or histopathology. Do not upload identifiable patient information."
)


def class_name(code: str) -> str:
    """'Melanoma' (unknown codes as they are)."""
    return CLASS_BY_CODE[code].name if code in CLASS_BY_CODE else str(code)


def class_label(code: str) -> str:
    """'Melanoma (mel)'."""
    return f"{class_name(code)} ({code})" if code in CLASS_BY_CODE else str(code)


def class_label_marked(code: str) -> str:
    """'Melanoma (mel) ▲' for malignant classes."""
    return class_label(code) + (f" {MALIGNANT_MARK}" if code in MALIGNANT_CODES else "")


def class_colour(code: str) -> str:
    """The class's colour in every chart (grey for unknown codes)."""
    return CLASS_BY_CODE[code].color if code in CLASS_BY_CODE else "#888888"


def short_name(code: str) -> str:
    """Compact axis label (full names are in legends, hovers and the Analyze page)."""
    return SHORT_NAMES.get(code, class_name(code))


def pct(value) -> str:
    """0.123 -> '12.3%'; None -> '—'."""
    return "—" if value is None else f"{float(value):.1%}"


def decimals(value, digits: int = 3) -> str:
    """0.12345 -> '0.123'; None -> '—'."""
    return "—" if value is None else f"{float(value):.{digits}f}"


def uncertainty_words(value: float) -> str:
    """Normalised entropy in words: low (< 0.25), moderate (< 0.5), high."""
    if value < 0.25:
        return "low"
    if value < 0.5:
        return "moderate"
    return "high"


def measurement_table(measurements: dict) -> pd.DataFrame:
    """core.lesion_measurements.describe_measurements as a two-column table (the PDF prints the same rows)."""
    from core.lesion_measurements import describe_measurements

    return pd.DataFrame(describe_measurements(measurements), columns=["Measurement", "Value"])


def cam_caption(method: str, class_code: str, masked: bool) -> str:
    """What made a CAM image: 'Grad-CAM · target Melanoma (mel) · lesion mask applied'."""
    mask = "lesion mask applied (map kept inside it)" if masked else "lesion mask not applied"
    return f"{method} · target {class_label(class_code)} · {mask}"
