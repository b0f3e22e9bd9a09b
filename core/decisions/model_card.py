"""The model card, typed: weights/model_card.json read in one place, checked, and turned into frozen sections.

    card = load_card("weights")          # ModelCard, or ModelCardError with a sentence naming what is missing
    card.referral.threshold              # typed fields of the sections the app needs
    card.display("metrics")              # a display-only section (figures, curves, tables) as plain JSON data

The card is the contract between calibration (python -m calibration.calibrate writes it) and every screen, the Analyzer,
the predict CLI and the batch engine (they read it). A section the app needs (REQUIRED_SECTIONS) that is missing or
malformed stops the load with the section's name and the command that rebuilds it, instead of becoming a default:
a card without its referral section once meant a 0.5 melanoma threshold, 100x the fitted one, without a word.
Display-only sections (DISPLAY_SECTIONS) may be absent; the pages say so where they would show them.

No torch here: the Home page reads the card while the model is still loading.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data.classes import CLASS_CODES, MALIGNANT_CODES

MODEL_CARD_NAME = "model_card.json"
CALIBRATE_COMMAND = "python -m calibration.calibrate --config calibration/presets/shipped.toml"
NETWORKS = ("coarse_sn", "mask_cn", "enhanced_sn")  # the MB-DCNN's three networks, in the order they run
# section -> the calibration step that writes it (calibration.calibrate.STEPS), for the error message
REQUIRED_SECTIONS = {
    "files": "evaluate", "preprocessing": "evaluate", "input_size": "evaluate", "decision_rule": "evaluate",
    "retrieval": "evaluate", "patient_context": "evaluate", "segmentation_tta": "evaluate", "split": "evaluate",
    "referral": "out_of_source", "triage": "out_of_source", "uncertainty": "out_of_source",
    "conformal": "out_of_source", "ood": "out_of_source", "dermoscopy_check": "dermoscopy_check",
    "image_quality": "image_quality",
}
DISPLAY_SECTIONS = ("name", "created", "architecture", "classes", "data", "dataset_summary", "metrics", "ablation",
                    "resolution_consistency", "training_curves", "training_time_minutes", "evaluation_seconds",
                    "predictions_csv", "headline", "ensemble", "out_of_source")
OOD_THRESHOLDS = ("chroma", "imagenet_distance", "unusual")


class ModelCardError(ValueError):
    """The model card lacks a section or field the app needs, or holds one of the wrong kind; str(exc) says which and
    how to rebuild the card."""


# ---------------------------------------------------------------- reading fields with a sentence on failure
class _Reader:
    """Reads one section of one card; every failure names the card file, the section and the field."""

    def __init__(self, where: str, section: str, entry: Any):
        self.where, self.section, self.entry = where, section, entry
        if not isinstance(entry, dict):
            self.fail(f"its `{section}` section is not an object")

    def fail(self, what: str):
        raise ModelCardError(f"{self.where}: {what}. Rebuild the card with `{CALIBRATE_COMMAND}` "
                             f"(its {REQUIRED_SECTIONS.get(self.section, 'evaluate')} step writes `{self.section}`).")

    def value(self, key: str, kind: type, optional: bool = False):
        if key not in self.entry or self.entry[key] is None:
            if optional:
                return None
            self.fail(f"its `{self.section}` section has no `{key}`")
        value = self.entry[key]
        accepted = (int, float) if kind is float else kind  # JSON writes 1.0 as 1
        if not isinstance(value, accepted) or (isinstance(value, bool) and kind is not bool):
            self.fail(f"`{self.section}.{key}` is {value!r}, not a {kind.__name__}")
        return kind(value)

    def mapping(self, key: str, optional: bool = False) -> dict:
        value = self.entry.get(key)
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            self.fail(f"its `{self.section}` section has no `{key}` object")
        return value

    def numbers(self, key: str, optional: bool = False) -> dict[str, float]:
        entry = self.mapping(key, optional)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry.values()):
            self.fail(f"`{self.section}.{key}` holds a value that is not a number: {entry}")
        return {str(k): float(v) for k, v in entry.items()}

    def probability(self, key: str) -> float:
        value = self.value(key, float)
        if not 0.0 <= value <= 1.0:
            self.fail(f"`{self.section}.{key}` is {value}, not a probability in [0, 1]")
        return value


# ---------------------------------------------------------------- sections
@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class InputSizes:
    classifier: tuple[int, int]   # (height, width)
    segmenter: tuple[int, int]


@dataclass(frozen=True)
class DecisionRuleSection:
    views: int
    temperature: float
    logit_offsets: tuple[float, ...]
    fit: dict = field(default_factory=dict)            # how it was chosen (shown on Model performance)


@dataclass(frozen=True)
class ReferralSection:
    score: str                    # core.decisions.referral.SCORES
    threshold: float
    target_sensitivity: float
    fit: dict = field(default_factory=dict)            # how the threshold was chosen (shown on Model performance)
    out_of_source: dict = field(default_factory=dict)  # its figures on held-out sources


@dataclass(frozen=True)
class TriageSection:
    thresholds: dict[str, float]  # malignant class code -> probability threshold
    target_sensitivity: float
    clear_threshold: float        # nevus probability from which a lesion below every threshold is cleared
    clear_margin: float           # ... with every malignant class below this fraction of its referral threshold
    out_of_source: dict           # each verdict's figures on held-out sources (the sentences quote them)


@dataclass(frozen=True)
class UncertaintySection:
    score: str
    cuts: tuple[float, float]
    error_rates: dict[str, float]                     # level -> validation error rate
    out_of_source_error_rates: dict[str, float]       # level -> held-out error rate
    out_of_source_error_range: dict[str, tuple[float, float]]


@dataclass(frozen=True)
class ConformalSection:
    quantile: float
    coverage: float
    out_of_source: dict


@dataclass(frozen=True)
class OODSection:
    thresholds: dict[str, float]  # OOD_THRESHOLDS
    unusual_score: str
    unusual_share: float
    out_of_source: dict
    results: dict = field(default_factory=dict)        # the rates per test set and probe set (Model performance)
    method: str = ""                                   # the fit in words


@dataclass(frozen=True)
class DermoscopyCheckSection:
    threshold: float              # refuse when P(dermoscopy) is below it
    flag_below: float | None      # grey the result ("this may be a camera photo") below it; None: no middle band


@dataclass(frozen=True)
class ImageQualitySection:
    thresholds: dict[str, float]  # check name -> threshold, the checks that passed the fit's keep rule (may be none)


@dataclass(frozen=True)
class SplitSection:
    seed: int | None              # core.data.splits.assign_splits' seed, or
    file: str | None              # a split file (core.data.splits.apply_split_file)
    method: str


@dataclass(frozen=True)
class RetrievalSection:
    k: int                        # similar cases shown
    dims: int                     # PCA size of the case index
    knn_k: int                    # neighbours of the k-NN distance (uncertainty and OOD scores)
    reference_set: str = ""       # the images the index holds, in words


@dataclass(frozen=True)
class PatientContextSection:
    shipped: bool                 # validation showed a gain: the Analyzer applies the head
    head: dict | None             # core.decisions.context_head.ContextHead.to_card()
    entry: dict                   # the whole section (the comparison the pages quote)


@dataclass(frozen=True)
class ModelCard:
    where: str                    # the file it was read from (for messages)
    version: str
    backbones: dict[str, str]     # network (coarse_sn, mask_cn, enhanced_sn) -> the timm backbone it is built on
    files: dict[str, FileEntry]
    preprocessing: dict           # core.imaging.preprocess.Preprocessing.from_card's entry
    input_size: InputSizes
    decision_rule: DecisionRuleSection
    referral: ReferralSection
    triage: TriageSection
    uncertainty: UncertaintySection
    conformal: ConformalSection
    ood: OODSection
    dermoscopy_check: DermoscopyCheckSection
    image_quality: ImageQualitySection
    split: SplitSection
    retrieval: RetrievalSection
    patient_context: PatientContextSection
    segmentation_views: int       # 1, or 4 (flip TTA of both segmenters)
    raw: dict                     # the JSON as read (display sections; what calibration writes back)

    @property
    def model_version(self) -> str:
        """The card's version and the first 12 hex digits of mask-CN's sha256: which weights made a result (the one
        spelling of the CLI's CSV, the batch manifest, the audit trail and the DICOM SR)."""
        mask_cn = self.files.get("mask_cn.safetensors")
        return f"{self.version} ({mask_cn.sha256[:12] if mask_cn else ''})"

    def display(self, name: str):
        """A display-only section as plain JSON data ({} when the card has none)."""
        if name not in DISPLAY_SECTIONS:
            raise KeyError(f"{name!r} is not a display section of the model card (DISPLAY_SECTIONS); a section the app "
                           "needs is a typed attribute")
        value = self.raw.get(name)
        return {} if value is None else value


# ---------------------------------------------------------------- the reader
def _size(reader: _Reader, network: str) -> tuple[int, int]:
    inner = _Reader(reader.where, reader.section, reader.mapping(network))
    return inner.value("height", int), inner.value("width", int)


def _parse(raw: dict, where: str) -> ModelCard:
    def section(name: str) -> _Reader:
        return _Reader(where, name, raw[name])

    for name, step in REQUIRED_SECTIONS.items():
        if not isinstance(raw.get(name), dict):
            raise ModelCardError(f"{where} has no `{name}` section: rebuild the card with `{CALIBRATE_COMMAND}` "
                                 f"(its {step} step writes it).")
    if not isinstance(raw.get("version"), str) or not raw["version"]:
        raise ModelCardError(f"{where} has no `version`: rebuild the card with `{CALIBRATE_COMMAND}` (its evaluate "
                             "step writes it).")
    version = raw["version"]
    # The networks need not share a backbone (a larger classifier on the same segmenters): each is built from its own.
    backbones = raw.get("backbones")
    if not isinstance(backbones, dict) or any(not isinstance(backbones.get(n), str) or not backbones[n]
                                              for n in NETWORKS):
        raise ModelCardError(f"{where} does not name the backbone of each network ({', '.join(NETWORKS)}) in "
                             f"`backbones`: rebuild the card with `{CALIBRATE_COMMAND}` (its evaluate step writes it).")
    backbones = {n: backbones[n] for n in NETWORKS}

    files = section("files")
    file_entries = {}
    for name, entry in files.entry.items():
        inner = _Reader(where, "files", entry)
        file_entries[name] = FileEntry(inner.value("sha256", str), inner.value("bytes", int))

    sizes = section("input_size")
    input_size = InputSizes(_size(sizes, "classifier"), _size(sizes, "segmenter"))

    rule = section("decision_rule")
    offsets = rule.entry.get("logit_offsets")
    if not isinstance(offsets, list) or len(offsets) != len(CLASS_CODES):
        rule.fail(f"`decision_rule.logit_offsets` is not a list of {len(CLASS_CODES)} numbers")
    decision_rule = DecisionRuleSection(rule.value("views", int), rule.value("temperature", float),
                                        tuple(float(v) for v in offsets), rule.mapping("fit", optional=True))
    if decision_rule.views not in (1, 4, 8) or decision_rule.temperature <= 0:
        rule.fail(f"`decision_rule` has views {decision_rule.views} (1, 4 or 8) and temperature "
                  f"{decision_rule.temperature} (> 0)")

    ref = section("referral")
    referral = ReferralSection(ref.value("score", str), ref.probability("threshold"),
                               ref.probability("target_sensitivity"), ref.mapping("fit", optional=True),
                               ref.mapping("out_of_source", optional=True))

    tri = section("triage")
    thresholds = tri.numbers("thresholds")
    if not thresholds or set(thresholds) - set(MALIGNANT_CODES) or not all(0 <= t <= 1 for t in thresholds.values()):
        tri.fail(f"`triage.thresholds` must map malignant classes {list(MALIGNANT_CODES)} to probabilities, "
                 f"got {thresholds}")
    triage = TriageSection(thresholds, tri.probability("target_sensitivity"), tri.probability("clear_threshold"),
                           tri.probability("clear_margin"), tri.mapping("out_of_source"))

    unc = section("uncertainty")
    cuts = unc.entry.get("cuts")
    if not isinstance(cuts, list) or len(cuts) != 2 or cuts[0] > cuts[1]:
        unc.fail(f"`uncertainty.cuts` is {cuts!r}, not two increasing numbers")
    ranges = unc.mapping("out_of_source_error_range", optional=True)
    uncertainty = UncertaintySection(unc.value("score", str), (float(cuts[0]), float(cuts[1])),
                                     unc.numbers("error_rates", optional=True),
                                     unc.numbers("out_of_source_error_rates", optional=True),
                                     {k: (float(v[0]), float(v[1])) for k, v in ranges.items()})

    con = section("conformal")
    conformal = ConformalSection(con.probability("quantile"), con.probability("coverage"),
                                 con.mapping("out_of_source", optional=True))

    ood_reader = section("ood")
    ood_thresholds = ood_reader.numbers("thresholds")
    if set(OOD_THRESHOLDS) - set(ood_thresholds):
        ood_reader.fail(f"`ood.thresholds` lacks {sorted(set(OOD_THRESHOLDS) - set(ood_thresholds))}")
    ood = OODSection({k: ood_thresholds[k] for k in OOD_THRESHOLDS}, ood_reader.value("unusual_score", str),
                     ood_reader.probability("unusual_share"), ood_reader.mapping("out_of_source", optional=True),
                     ood_reader.mapping("results", optional=True), ood_reader.value("method", str, optional=True) or "")

    check_entry = section("dermoscopy_check")
    dermoscopy_check = DermoscopyCheckSection(check_entry.probability("threshold"),
                                              check_entry.value("flag_below", float, optional=True))
    image_quality = ImageQualitySection(section("image_quality").numbers("thresholds"))

    spl = section("split")
    split = SplitSection(spl.value("seed", int, optional=True), spl.value("file", str, optional=True),
                         spl.value("method", str))
    if split.seed is None and not split.file:
        spl.fail("its `split` section names neither a `seed` nor a `file`")

    ret = section("retrieval")
    retrieval = RetrievalSection(ret.value("k", int), ret.value("dims", int), ret.value("knn_k", int),
                                 ret.value("reference_set", str, optional=True) or "")

    ctx = section("patient_context")
    shipped = ctx.value("shipped", bool)
    head = ctx.mapping("head") if shipped else ctx.entry.get("head")
    patient_context = PatientContextSection(shipped, head, ctx.entry)

    seg = section("segmentation_tta")
    segmentation_views = seg.value("views", int)
    if segmentation_views not in (1, 4):
        seg.fail(f"`segmentation_tta.views` is {segmentation_views}, not 1 or 4")

    preprocessing = section("preprocessing").entry
    return ModelCard(where, version, backbones, file_entries, preprocessing, input_size, decision_rule, referral,
                     triage, uncertainty, conformal, ood, dermoscopy_check, image_quality, split, retrieval,
                     patient_context, segmentation_views, raw)


def card_from_dict(raw: dict, where: str = MODEL_CARD_NAME) -> ModelCard:
    """The typed card of a card's JSON data (calibration checks the card it is about to write with it)."""
    if not isinstance(raw, dict):
        raise ModelCardError(f"{where}: the model card is not a JSON object")
    return _parse(raw, where)


def read_card_json(weights_dir: str | os.PathLike) -> dict:
    """The card's JSON data as written, unchecked (calibration steps that rebuild a section read the others so)."""
    path = Path(weights_dir) / MODEL_CARD_NAME
    if not path.is_file():
        raise ModelCardError(f"{path}: model card not found. Build it with `{CALIBRATE_COMMAND}`.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelCardError(f"{path}: the model card is not valid JSON ({exc}). Rebuild it with "
                             f"`{CALIBRATE_COMMAND}`.") from exc


def load_card(weights_dir: str | os.PathLike) -> ModelCard:
    """The typed model card of a weights folder; ModelCardError (naming the file, section and field) when it is
    missing, not JSON, or lacks anything in REQUIRED_SECTIONS."""
    return card_from_dict(read_card_json(weights_dir), str(Path(weights_dir) / MODEL_CARD_NAME))
