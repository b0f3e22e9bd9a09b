"""The one definition of the seven HAM10000 diagnostic classes, used everywhere."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LesionClass:
    code: str
    name: str
    malignant: bool
    color: str  # hex colour used for this class in every chart


CLASSES: tuple[LesionClass, ...] = (
    LesionClass("akiec", "Actinic keratosis / intraepithelial carcinoma", True, "#E69F00"),
    LesionClass("bcc", "Basal cell carcinoma", True, "#D55E00"),
    LesionClass("bkl", "Benign keratosis-like lesion", False, "#56B4E9"),
    LesionClass("df", "Dermatofibroma", False, "#009E73"),
    LesionClass("mel", "Melanoma", True, "#CC0000"),
    LesionClass("nv", "Melanocytic nevus", False, "#0072B2"),
    LesionClass("vasc", "Vascular lesion", False, "#CC79A7"),
)
CLASS_CODES: tuple[str, ...] = tuple(c.code for c in CLASSES)
NUM_CLASSES = len(CLASSES)
CLASS_INDEX: dict[str, int] = {c.code: i for i, c in enumerate(CLASSES)}
CLASS_BY_CODE: dict[str, LesionClass] = {c.code: c for c in CLASSES}
MALIGNANT_CODES: tuple[str, ...] = tuple(c.code for c in CLASSES if c.malignant)
MALIGNANT_INDICES: tuple[int, ...] = tuple(i for i, c in enumerate(CLASSES) if c.malignant)


def class_index(code: str) -> int:
    try:
        return CLASS_INDEX[code]
    except KeyError:
        raise ValueError(f"unknown diagnosis code {code!r}; expected one of {', '.join(CLASS_CODES)}") from None
