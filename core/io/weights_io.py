"""Weight files: safetensors only (no pickle), each checked against the model card's sha256.

torch is imported only by the functions that handle tensors, so reading the model card stays cheap (the dashboard's
first page shows it while the model is still loading).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from core.decisions.model_card import NETWORKS, ModelCard

if TYPE_CHECKING:
    import torch

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"  # the repository's shipped weights


class WeightsIntegrityError(RuntimeError):
    """A weight file is missing, altered, or not listed in the model card; the model must not run."""


#: The three networks' weight files in a weights folder, by architecture.
NETWORK_FILES = {name: f"{name}.safetensors" for name in NETWORKS}


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(module_or_state: torch.nn.Module | dict, path: str | os.PathLike, half: bool = True,
                 metadata: dict[str, str] | None = None) -> dict:
    """Save a state dict as safetensors (floating tensors as fp16 when half) with optional string metadata (what the
    network is and what input it expects: see weights_metadata); returns {sha256, bytes}."""
    import torch
    from safetensors.torch import save_file

    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    tensors = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        tensors[name] = tensor
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return {"sha256": sha256_of(path), "bytes": os.path.getsize(path)}


def verified_bytes(weights_dir: str | os.PathLike, file_name: str, card: ModelCard) -> bytes:
    """The bytes of a file in the weights folder after checking their sha256 against the model card."""
    path = Path(weights_dir) / file_name
    entry = card.files.get(file_name)
    expected = entry.sha256 if entry is not None else ""
    if not expected:
        raise WeightsIntegrityError(f"{path}: not listed with a sha256 in the model card; refusing to load it")
    if not path.is_file():
        raise WeightsIntegrityError(f"{path}: weight file not found")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise WeightsIntegrityError(
            f"{path}: sha256 {actual[:12]}… does not match the model card ({expected[:12]}…); "
            "the file was altered or replaced, so the model will not run"
        )
    return data


def load_verified(weights_dir: str | os.PathLike, file_name: str, card: ModelCard) -> dict[str, torch.Tensor]:
    """Load one safetensors file after checking its sha256 against the model card; fp32 tensors out."""
    from safetensors.torch import load

    path = Path(weights_dir) / file_name
    data = verified_bytes(weights_dir, file_name, card)
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error type for a malformed header
        raise WeightsIntegrityError(f"{path}: not a valid safetensors file ({exc})") from exc
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header ({} when there is none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
