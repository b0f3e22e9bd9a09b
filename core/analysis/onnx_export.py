"""The three networks as ONNX files, from the same weights the torch path loads: what an inference engine made for the
CPU (core.analysis.onnx_engine) runs.

    export_networks(weights_dir, out_dir) -> {"coarse_sn": out_dir / "coarse_sn.onnx", ...}

Each network is exported in float32 with its BatchNorm folded (core.models.cpu_inference.fold_batchnorm), batch,
height and width left dynamic (mask-CN sees 4 views of one shape and 4 transposed ones). mask-CN's file gives the
logits and the last feature map (the CAMs and the pooled features are computed from it in torch, as before).

Every module is put in eval mode before the export and checked to still be in it afterwards: torch.onnx.export
restores the training flag of the module it was given, recursively, so a wrapper made in training mode (any new
nn.Module) turns the network back to training mode after the export. mask-CN's timm head then applies its dropout
(p = 0.2) and the torch logits move by up to 1.6 against the ONNX ones, while the features (no dropout before them)
agree to 1e-5: that was the disagreement first seen between torch and ONNX Runtime.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from core.io.weights_io import NETWORK_FILES
from core.decisions.model_card import ModelCard, load_card
from core.io.weights_io import load_verified, sha256_of
from core.models import create_model
from core.models.cpu_inference import fold_batchnorm

ONNX_FILES = {name: f"{name}.onnx" for name in NETWORK_FILES}
OPSET = 17
# (input names, output names) of each exported graph; every input's dims 0, 2, 3 are dynamic
SIGNATURES = {"coarse_sn": (("image",), ("logits",)),
              "enhanced_sn": (("image", "localisation"), ("logits",)),
              "mask_cn": (("image_and_mask",), ("logits", "features"))}


class _MaskCNGraph(nn.Module):
    """mask-CN as the graph exports it: logits and the last feature map."""

    def __init__(self, mask_cn: nn.Module):
        super().__init__()
        self.mask_cn = mask_cn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mask_cn.forward_with_features(x)


def load_fp32_network(weights_dir: str | Path, name: str, card: ModelCard | None = None) -> nn.Module:
    """One network from weights_dir (sha256-checked against the model card), eval mode, BatchNorm folded, float32."""
    card = card if card is not None else load_card(weights_dir)
    model = create_model(name, card.backbones[name], pretrained=None)
    model.load_state_dict(load_verified(Path(weights_dir), NETWORK_FILES[name], card))
    return fold_batchnorm(model.eval()).requires_grad_(False)


def example_inputs(name: str, segmenter_size: tuple[int, int], classifier_size: tuple[int, int]) -> tuple:
    """Inputs of the shapes the analysis gives each network (the export traces one forward pass with them)."""
    (seg_h, seg_w), (cls_h, cls_w) = segmenter_size, classifier_size
    generator = torch.Generator().manual_seed(0)
    if name == "mask_cn":
        return (torch.randn(4, 4, cls_h, cls_w, generator=generator),)
    image = torch.randn(1, 3, seg_h, seg_w, generator=generator)
    if name == "enhanced_sn":
        return image, torch.rand(1, 1, -(-cls_h // 32), -(-cls_w // 32), generator=generator)
    return (image,)


def export_network(model: nn.Module, name: str, inputs: tuple, path: str | Path) -> Path:
    """Write one eval-mode network to `path` as ONNX (opset OPSET, dims 0, 2, 3 of every input dynamic)."""
    graph = (_MaskCNGraph(model) if name == "mask_cn" else model).eval()
    input_names, output_names = SIGNATURES[name]
    dynamic = {n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in input_names}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer warnings
        torch.onnx.export(graph, inputs, str(path), dynamo=False, opset_version=OPSET, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic)
    if any(module.training for module in graph.modules()):
        raise RuntimeError(f"{name}: the export left the network in training mode")
    return path


def export_networks(weights_dir: str | Path, out_dir: str | Path) -> dict[str, dict]:
    """The three networks of weights_dir as ONNX files in out_dir (the names of ONNX_FILES); returns the model card's
    `files` entries for them, {file name: {sha256, bytes}}. The card-building step writes them next to the weights
    (out_dir = weights_dir) and lists these entries; core.analysis.onnx_engine then loads them sha256-checked."""
    weights_dir, out_dir = Path(weights_dir), Path(out_dir)
    card = load_card(weights_dir)
    segmenter, classifier = card.input_size.segmenter, card.input_size.classifier
    entries = {}
    for name in NETWORK_FILES:
        path = export_network(load_fp32_network(weights_dir, name, card), name,
                              example_inputs(name, segmenter, classifier), out_dir / ONNX_FILES[name])
        entries[path.name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    return entries
