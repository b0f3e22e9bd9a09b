"""Training state on disk: written atomically, restored exactly (weights, optimiser, EMA, RNG streams, position)."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def save_state(path: Path, state: dict) -> None:
    """torch.save to a temporary file, then rename: a run killed mid-write leaves the previous state intact."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state(generator: torch.Generator) -> dict:
    """The random streams a training step draws from: torch's global RNG (dropout) and the augmentation generator."""
    return {"torch": torch.get_rng_state(), "augment": generator.get_state()}


def restore_rng(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["augment"])
