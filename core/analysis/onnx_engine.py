"""The three networks run by an inference engine made for the CPU (ONNX Runtime or OpenVINO) instead of torch, called
exactly like the torch modules they stand in for (torch tensors in and out), so core.models.mbdcnn.mbdcnn_forward and
the Analyzer run unchanged.

    networks = engine_networks("onnxruntime", weights_dir, card, mask_cn, threads=2, precision="fp32")
    networks["coarse_sn"](x); networks["enhanced_sn"](x, loc); networks["mask_cn"].forward_with_features(x4)

ENGINES: torch (the networks in PyTorch, packed for oneDNN: core.models.cpu_inference), onnxruntime (fp32, MLAS
kernels), openvino (its CPU plugin; bf16 where core.models.precision picks bf16, else f32). The Analyzer chooses by
LESIONLENS_ENGINE (default: DEFAULT_ENGINE). PyTorch stays for the CAM methods that need gradients (they run on the
torch mask-CN), for mask-CN's class maps and pooled features (computed from the engine's feature map with the torch
head's weights) and for the ImageNet features of the not-dermoscopy check.

The ONNX files (core.analysis.onnx_export) are read from the weights folder, sha256-checked against the model card
like every weight file, when the card lists them. A card without them (weights built before the export existed) gets
them exported once into a cache folder (LESIONLENS_ONNX_CACHE, default ~/.cache/lesionlens/onnx) keyed by the
weights' sha256, written with a list of their own sha256 that is checked at every load.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.io.weights_io import NETWORK_FILES
from core.analysis import onnx_export
from core.analysis.onnx_export import ONNX_FILES, SIGNATURES, export_networks
from core.decisions.model_card import FileEntry, ModelCard
from core.io.weights_io import WeightsIntegrityError, verified_bytes

ENGINES = ("torch", "onnxruntime", "openvino")
DEFAULT_ENGINE = "torch"
ENGINE_ENV = "LESIONLENS_ENGINE"
CACHE_ENV = "LESIONLENS_ONNX_CACHE"
CACHE_MANIFEST = "sha256.json"
log = logging.getLogger(__name__)


def chosen_engine(name: str | None = None) -> str:
    """The engine asked for (argument, else LESIONLENS_ENGINE, else DEFAULT_ENGINE), checked against ENGINES; torch,
    with a logged sentence, when the engine's package is not installed."""
    engine = (name or os.environ.get(ENGINE_ENV, "") or DEFAULT_ENGINE).strip().lower()
    if engine not in ENGINES:
        raise ValueError(f"{ENGINE_ENV} must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine != "torch" and importlib.util.find_spec(engine) is None:
        log.warning("The %s engine was asked for, but its package is not installed (pip install %s): the networks "
                    "run in torch instead.", engine, engine)
        return "torch"
    return engine


class EngineNetwork:
    """One exported network: called with torch tensors like the module it replaces, returns its first output."""

    def __init__(self, run, name: str):
        self.run, self.name = run, name  # run: list of float32 arrays -> list of float32 arrays (SIGNATURES order)

    def outputs(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        arrays = [np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in inputs]
        return [torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in self.run(arrays)]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.outputs(*inputs)[0]


class EngineMaskCN(EngineNetwork):
    """mask-CN's forward passes in the engine; its class maps and pooled features from the torch module's head."""

    def __init__(self, run, torch_mask_cn: torch.nn.Module):
        super().__init__(run, "mask_cn")
        self.net = torch_mask_cn.net  # forward_head(features, pre_logits=True): the pooled features
        self.class_activation_maps = torch_mask_cn.class_activation_maps

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.outputs(x)
        return logits, features


def _onnxruntime(model: bytes, threads: int, precision: str):
    """precision: unused, ONNX Runtime's CPU kernels compute these graphs in fp32."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = max(1, threads), 1
    # No busy-waiting between calls: on a CPU shared with other work (other sessions' analyses, torch's CAMs) a
    # spinning pool takes cores the next computation needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda arrays: session.run(None, dict(zip(names, arrays)))


def _openvino(model: bytes, threads: int, precision: str):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(model), "CPU", {
        "INFERENCE_NUM_THREADS": max(1, threads), "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
    request = compiled.create_infer_request()
    return lambda arrays: [request.infer(arrays)[output] for output in compiled.outputs]


_RUNTIMES = {"onnxruntime": _onnxruntime, "openvino": _openvino}


def engine_networks(engine: str, weights_dir: str | Path, card: ModelCard, mask_cn: torch.nn.Module, threads: int,
                    precision: str = "fp32") -> dict:
    """{coarse_sn, enhanced_sn, mask_cn} run by `engine` (onnxruntime | openvino) from the weights' ONNX files;
    mask_cn: the loaded torch mask-CN (its head gives the class maps and pooled features)."""
    models = onnx_models(weights_dir, card)
    runtime = _RUNTIMES[engine]
    runs = {name: runtime(models[name], threads, precision) for name in SIGNATURES}
    return {"coarse_sn": EngineNetwork(runs["coarse_sn"], "coarse_sn"),
            "enhanced_sn": EngineNetwork(runs["enhanced_sn"], "enhanced_sn"),
            "mask_cn": EngineMaskCN(runs["mask_cn"], mask_cn)}


@dataclass(frozen=True)
class ExportManifest:
    """The sha256 list of an export cache folder, read as verified_bytes reads a model card's `files`."""
    files: dict[str, FileEntry]

    @classmethod
    def read(cls, path: Path) -> "ExportManifest":
        return cls({name: FileEntry(str(e["sha256"]), int(e["bytes"])) for name, e in json.loads(path.read_text()).items()})


def onnx_models(weights_dir: str | Path, card: ModelCard) -> dict[str, bytes]:
    """The ONNX bytes of each network, sha256-checked: from the weights folder when the card lists them, else from
    the export cache (exported there first when missing)."""
    if all(file_name in card.files for file_name in ONNX_FILES.values()):
        return {name: verified_bytes(weights_dir, file_name, card) for name, file_name in ONNX_FILES.items()}
    folder = cache_folder(card)
    if not (folder / CACHE_MANIFEST).is_file():
        log.warning("The model card lists no ONNX files: exporting the networks once into %s (the card-building step "
                    "writes them into the weights folder: core.analysis.onnx_export.export_networks).", folder)
        entries = export_networks(weights_dir, folder)
        (folder / CACHE_MANIFEST).write_text(json.dumps(entries, indent=1))
    cached = ExportManifest.read(folder / CACHE_MANIFEST)
    try:
        return {name: verified_bytes(folder, file_name, cached) for name, file_name in ONNX_FILES.items()}
    except WeightsIntegrityError as exc:
        raise WeightsIntegrityError(f"{exc} (a damaged export cache: delete {folder} to export again)") from exc


def cache_folder(card: ModelCard) -> Path:
    """Where the networks of this card's weights are exported: one folder per set of weights (their sha256), torch
    version and export code (core.analysis.onnx_export)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lesionlens" / "onnx")
    digest = hashlib.sha256(torch.__version__.encode() + Path(onnx_export.__file__).read_bytes())
    for file_name in NETWORK_FILES.values():
        entry = card.files.get(file_name)
        digest.update((entry.sha256 if entry is not None else "").encode())
    return root / digest.hexdigest()[:16]
