"""The model card as calibration writes it: the split the runs were trained on, the sections each step returns merged
into one card, checked by the app's own reader (core.decisions.model_card) and written atomically.

calibration.calibrate builds every section in order and writes the card once. A step's own command
(calibration.evaluate, calibration.out_of_source, ...) merges its sections into the card already in WEIGHTS through
write_sections, so re-running one step never drops the others' sections, and a card that would lack one the app needs is
not written at all.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.decisions.model_card import (CALIBRATE_COMMAND, MODEL_CARD_NAME, ModelCard, ModelCardError, card_from_dict,
                                       read_card_json)

NETWORK_STAGES = ("coarse_sn", "mask_cn", "enhanced_sn")


@dataclass(frozen=True)
class Split:
    """The train / val / test split a model was trained on: a split file (train.splits), else a seed."""
    seed: int | None
    file: str | None

    @classmethod
    def of_runs(cls, runs: Path) -> "Split":
        """The split recorded in the shipped stages' history.json configs (train.train writes split_seed and
        split_file); the stages must agree, or the rules would be fitted on another model's training images."""
        found = {}
        for stage in NETWORK_STAGES:
            path = Path(runs) / stage / "history.json"
            config = json.loads(path.read_text())["config"]
            if not config.get("split_file") and config.get("split_seed") is None:
                raise ValueError(f"{path}: its config records neither split_seed nor split_file")
            found[stage] = cls(None if config.get("split_file") else int(config["split_seed"]),
                               config.get("split_file") or None)
        if len(set(found.values())) != 1:
            raise ValueError(f"{runs}: the stages were trained on different splits: {found}")
        return found[NETWORK_STAGES[0]]

    @classmethod
    def of_card(cls, card: dict) -> "Split":
        """The split a card's `split` section records (a step run on its own fits on the shipped model's split)."""
        entry = card.get("split") or {}
        if entry.get("file"):
            return cls(None, str(entry["file"]))
        if entry.get("seed") is None:
            raise ModelCardError(f"the model card's `split` section names neither a seed nor a file; rebuild it with "
                                 f"`{CALIBRATE_COMMAND}`")
        return cls(int(entry["seed"]), None)

    @classmethod
    def of_args(cls, split_file: str, weights: Path) -> "Split":
        """--split-file when given, else the split of the card in WEIGHTS."""
        return cls(None, split_file) if split_file else cls.of_card(read_card_json(weights))

    def apply(self, manifest):
        from core.data.splits import split_by

        return split_by(manifest, self.seed, self.file)

    def text(self) -> str:
        return f"split file {self.file}" if self.file else f"seed {self.seed}"


def json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def write_card(weights: Path, card: dict) -> ModelCard:
    """Check the card with the app's reader, then write WEIGHTS/model_card.json atomically (a temporary file in the
    same folder, then os.replace): a reader never sees half a card, and a card the app would refuse is not written."""
    path = Path(weights) / MODEL_CARD_NAME
    text = json.dumps(card, indent=1, default=json_default)
    typed = card_from_dict(json.loads(text), str(path))
    handle, temporary = tempfile.mkstemp(prefix=".model_card.", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return typed


def merged(card: dict, sections: dict) -> dict:
    """The card with a step's sections: each replaces the section of that name, except `files`, where each step adds
    the weight files it wrote (evaluate the networks, OOD and case index; the dermoscopy check its own)."""
    files = {**card.get("files", {}), **sections.get("files", {})}
    return {**card, **sections, **({"files": files} if files else {})}


def write_sections(weights: Path, sections: dict) -> ModelCard:
    """One step's sections merged into the card in WEIGHTS (a step run on its own). Raises ModelCardError, writing
    nothing, when the result would lack a section the app needs (e.g. evaluate on a folder without a card)."""
    path = Path(weights) / MODEL_CARD_NAME
    card = read_card_json(weights) if path.is_file() else {}
    try:
        return write_card(weights, merged(card, sections))
    except ModelCardError as exc:
        raise ModelCardError(f"{exc} Nothing was written: a single step cannot make a complete card.") from exc
