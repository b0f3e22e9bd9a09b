"""Words and numbers as the pages show them: class names and colours, model and test-set names, percentages and
confidence intervals, the patient-context note, the measurement table, CAM captions and the disclaimer."""
from __future__ import annotations

import pandas as pd

from core.data.classes import CLASS_BY_CODE, CLASSES, MALIGNANT_CODES
from core.decisions.model_card import ModelCard

MALIGNANT_MARK = "▲"
MODEL_LABELS = {"mask_cn": "mask-CN (shipped)", "mask_cn_single_view": "mask-CN, one view (no TTA)",
                "classifier": "Image-only classifier", "ensemble": "mask-CN + image-only (mean)",
                "mask_cn_context": "+ context head"}
HEADLINE_SOURCES = {"ham10000": "HAM10000 test", "isic2017": "ISIC 2017 val"}
HEADLINE_WORDS = {"auc": "AUC", "sn": "SN", "dice": "Dice", "jaccard": "Jaccard"}
OOD_WORDS = {"in": "in distribution", "unusual": "⚠ unusual", "maybe_clinical_photo": "⚠ may be a camera photo",
             "clinical_photo": "⚠ clinical photo",
             "not_skin": "⚠ not skin"}
OOD_RESULT_LABELS = {"ham10000_test": "HAM10000 test", "isic2017_test": "ISIC 2017 official validation",
                     "real_non_dermoscopy_photos": "Real photographs (not dermoscopy)",
                     "synthetic_non_dermoscopic": "Synthetic images (noise, flat colour, stripes, text)"}
SEG_LABELS = {"coarse_sn": "coarse-SN", "enhanced_sn": "enhanced-SN"}
SEG_VARIANT_LABELS = {"coarse_sn": "coarse-SN", "coarse_sn_tta": "coarse-SN + flip TTA",
                      "coarse_sn_more": "coarse-SN trained longer (control)", "enhanced_sn": "enhanced-SN (shipped)",
                      "enhanced_sn_tta": "enhanced-SN + flip TTA",
                      "enhanced_sn_zero": "enhanced-SN, zero localisation map (control)"}
SHORT_NAMES = {"akiec": "Actinic keratosis/IEC", "bcc": "Basal cell carcinoma", "bkl": "Benign keratosis",
               "df": "Dermatofibroma", "mel": "Melanoma", "nv": "Nevus", "vasc": "Vascular lesion"}
SHORT_NAME_COLOURS = {SHORT_NAMES[c.code]: c.color for c in CLASSES}

DISCLAIMER = (
    "**Decision support for health-care professionals — not a diagnosis.** LesionLens estimates class "
    "probabilities for a dermoscopic image from a research model trained on public dermoscopy archives (Home lists "
    "them). It can be "
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


def ci_text(entry: dict | None, fmt=decimals) -> str:
    """A model-card figure {value, ci95} as '0.701 (95% CI 0.640 to 0.757)'; '—' when absent."""
    if not entry or entry.get("value") is None:
        return "—"
    low, high = (entry.get("ci95") or [None, None])[:2]
    interval = "" if low is None or high is None else f" (95% CI {fmt(low)} to {fmt(high)})"
    return fmt(entry["value"]) + interval


def ci_range(entry: dict | None, fmt=decimals) -> str:
    """Only the interval of a model-card figure: '95% CI 0.640 to 0.757' ('' when absent)."""
    low, high = ((entry or {}).get("ci95") or [None, None])[:2]
    return "" if low is None or high is None else f"95% CI {fmt(low)} to {fmt(high)}"


def paired_difference_label(name: str) -> str:
    """'enhanced_sn - coarse_sn (Jaccard)' (model card) -> 'enhanced-SN (shipped) − coarse-SN (Jaccard)'."""
    pair, _, metric = name.partition(" (")
    names = " − ".join(SEG_VARIANT_LABELS.get(p.strip(), p.strip()) for p in pair.split(" - "))
    return names + (f" ({metric}" if metric else "")


def headline_label(key: str, with_source: bool = True) -> str:
    """A model card headline key in words: 'ham10000_macro_auc' -> 'HAM10000 test: Macro AUC' (or 'Macro AUC')."""
    source, _, rest = key.partition("_")
    words = " ".join(HEADLINE_WORDS.get(w, w) for w in rest.split("_")).replace("enhanced SN", "enhanced-SN")
    words = words[:1].upper() + words[1:]
    return f"{HEADLINE_SOURCES.get(source, source)}: {words}" if with_source else words


def headline_format(key: str):
    """pct for accuracies, three decimals for AUC, Dice and Jaccard."""
    return pct if "accuracy" in key else decimals


def context_use_text(card: ModelCard, where: str = "; see Model performance") -> str:
    """Whether the shipped model uses patient context, with the card's validation comparison; `where` points to the
    details ("" on the Model performance page itself)."""
    context = card.patient_context.entry
    gain = context.get("gain")
    low, high = (context.get("gain_ci95") or [None, None])[:2]
    measured = ("" if gain is None or low is None else
                f" (on validation, adding age, sex and site changed the criterion by {gain:+.3f}, 95% CI "
                f"{low:+.3f} to {high:+.3f}{where})")
    if context.get("shipped"):
        return f"The shipped model uses the patient context together with the image{measured}."
    ece = (context.get("validation_ece") or {}).get("image_and_context")
    why = ("" if context.get("calibrated", True) or ece is None else
           f"; its gain came with miscalibrated probabilities (validation ECE {ece:.3f} with context)")
    return (f"The shipped model does not use patient context{measured}{why}: the values are checked and recorded in "
            "the report only.")


def measurement_table(measurements: dict) -> pd.DataFrame:
    """core.lesion.lesion_measurements.describe_measurements as a two-column table (the PDF prints the same rows but
    the dermoscopy score)."""
    from core.lesion.lesion_measurements import describe_measurements

    return pd.DataFrame(describe_measurements(measurements, score=True), columns=["Measurement", "Value"])


def prediction_set_text(codes: list[str], card: ModelCard) -> str:
    """'90% prediction set: Melanocytic nevus, Melanoma. At clinics ... held the true diagnosis 89% of the time.'"""
    coverage, held = card.conformal.coverage, card.conformal.out_of_source.get("coverage")
    measured = ("" if held is None else f" At clinics the model was not trained on, such sets held the true diagnosis "
                                        f"{held:.0%} of the time.")
    return f"{coverage:.0%} prediction set: {', '.join(class_name(c) for c in codes)}.{measured}"


#: Below this probability a class's CAM gets a note: every map is scaled to its own maximum, so it looks as hot as the
#: top class's even when the model gives the class almost no weight.
CAM_NOTE_BELOW = 0.10


def cam_scale_note(class_code: str, probability: float) -> str:
    """What a CAM of an unlikely class means ("" for a class at CAM_NOTE_BELOW or more)."""
    if probability >= CAM_NOTE_BELOW:
        return ""
    return (f"{class_name(class_code)} has a probability of only {pct(probability)}. The map is scaled to its own "
            f"maximum, so red marks where the model found the most evidence for {class_name(class_code)}, however "
            "little that is; it does not mean this class is likely.")


def cam_caption(method: str, class_code: str, masked: bool) -> str:
    """What made a CAM image: 'Grad-CAM · target Melanoma (mel) · lesion mask applied'."""
    mask = "lesion mask applied (map kept inside it)" if masked else "lesion mask not applied"
    return f"{method} · target {class_label(class_code)} · {mask}"


# Diagnosis content of an unusual image is shown greyed: the pages put it into containers whose key starts with
# "unusual" (Streamlit gives a keyed container the CSS class st-key-<key>).
GREYED_CSS = "<style>[class*='st-key-unusual'] {opacity: 0.45; filter: grayscale(0.8);}</style>"
