"""Patient context: age, sex and anatomical site (the HAM10000 vocabulary), each optional.

One validation for every surface (Analyze form, Batch CSV, `core.analysis.predict --metadata`, PDF): a missing field is
fine, a bad value is an error whose message names the field (and, for a CSV, the file and row).
"""
from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEXES = ("female", "male")
SITES = ("abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand", "lower extremity", "neck",
         "scalp", "trunk", "upper extremity")
MAX_AGE = 120
CSV_COLUMNS = ("image", "age", "sex", "site")
ENCODING = ("age / 100", "age missing", *(f"sex {s}" for s in SEXES), "sex missing", *(f"site {s}" for s in SITES),
            "site missing")
MISSING = ("", "unknown", "na", "n/a", "none")


class ContextError(ValueError):
    """A patient-context value is out of range or not in the vocabulary; the message says which and why."""


@dataclass(frozen=True)
class PatientContext:
    age: float | None = None
    sex: str | None = None
    site: str | None = None

    @classmethod
    def parse(cls, age=None, sex=None, site=None) -> "PatientContext":
        """Validate raw values (strings or numbers; None / "" / "unknown" = not given)."""
        return cls(_age(age), _choice(sex, SEXES, "sex"), _choice(site, SITES, "site"))

    @classmethod
    def from_metadata(cls, age=None, sex=None, site=None) -> "PatientContext":
        """A dataset's own metadata (e.g. HAM10000's age, sex, localization): a value outside the vocabulary is left
        out (not given) rather than refused, since the dataset, not the user, wrote it."""
        def kept(read, value):
            try:
                return read(value)
            except ContextError:
                return None
        return cls(kept(_age, age), kept(lambda v: _choice(v, SEXES, "sex"), sex),
                   kept(lambda v: _choice(v, SITES, "site"), site))

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.age, self.sex, self.site))

    def encoded(self) -> np.ndarray:
        """The numbers a model sees (ENCODING): age / 100 and an 'age missing' flag, sex one-hot and a missing flag,
        site one-hot and a missing flag."""
        values = [0.0 if self.age is None else self.age / 100, float(self.age is None)]
        values += [float(self.sex == s) for s in SEXES] + [float(self.sex is None)]
        values += [float(self.site == s) for s in SITES] + [float(self.site is None)]
        return np.array(values, dtype=np.float64)

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for reports; 'not given' for a missing field."""
        return [("Age", "not given" if self.age is None else f"{self.age:g} years"),
                ("Sex", self.sex or "not given"), ("Anatomical site", self.site or "not given")]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value).strip().lower() in MISSING


def _age(value) -> float | None:
    if _missing(value):
        return None
    try:
        age = float(str(value).strip())
    except ValueError:
        raise ContextError(f"age {value!r} is not a number of years") from None
    if not 0 <= age <= MAX_AGE:
        raise ContextError(f"age {age:g} is outside 0-{MAX_AGE} years")
    return age


def _choice(value, allowed: tuple[str, ...], field: str) -> str | None:
    if _missing(value):
        return None
    text = str(value).strip().lower().replace("_", " ")
    if text not in allowed:
        raise ContextError(f"{field} {value!r} is not one of: {', '.join(allowed)}")
    return text


def read_context_csv(path: str | Path) -> dict[str, PatientContext]:
    """image (file name without extension) -> context, from a CSV with columns image[, age, sex, site]."""
    path = Path(path)
    if not path.is_file():
        raise ContextError(f"{path}: metadata file not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return parse_context_csv(handle, str(path))


def parse_context_csv(lines: Iterable[str], name: str) -> dict[str, PatientContext]:
    """read_context_csv's rules for CSV text already in memory (an upload); `name` starts every error message."""
    reader = csv.DictReader(lines)
    if not reader.fieldnames or "image" not in [f.strip() for f in reader.fieldnames]:
        raise ContextError(f"{name}: needs an 'image' column (and any of age, sex, site)")
    unknown = [f for f in reader.fieldnames if f.strip() not in CSV_COLUMNS]
    if unknown:
        raise ContextError(f"{name}: unknown column(s) {', '.join(unknown)}; expected {', '.join(CSV_COLUMNS)}")
    contexts: dict[str, PatientContext] = {}
    for line, row in enumerate(reader, start=2):
        row = {k.strip(): v for k, v in row.items() if k is not None}
        image = Path(str(row.get("image") or "").strip()).stem
        if not image:
            raise ContextError(f"{name}: row {line} has no image name")
        try:
            contexts[image] = PatientContext.parse(row.get("age"), row.get("sex"), row.get("site"))
        except ContextError as exc:
            raise ContextError(f"{name}: row {line} ({image}): {exc}") from None
    return contexts
