"""The four trainable networks as stage objects: what each reads, how it makes a batch, its loss, its validation.

The training loop (train/train.py) knows nothing about stages; it asks a stage (Stage declares these: batch, loss and
validate are abstract, so a stage missing one cannot be made; the base class does the shared work, load among it)
    load(table, training)        -> Arrays      (images, labels, masks, auxiliary inputs of one split)
    batch(arrays, idx, generator) -> (inputs, target)   (augmented when a generator is given)
    loss(output, target)          -> scalar
    validate(model, {source: Arrays}) -> metrics with a "score" (higher is better; picks the checkpoint)

- coarse-SN: image -> lesion mask (Dice + rank loss).
- mask-CN: image + a lesion-mask channel -> 7 classes. In training the channel is the ground-truth mask perturbed
  the way a coarse segmenter errs (train.augment.perturb_masks: erosion / dilation, soft edges, sometimes empty;
  coarse-SN's mask stands in for the truth on images that have none):
  coarse-SN's output on its own training images is cleaner than on new images, and perturbed truth needs no
  coarse-SN run, so mask-CN does not wait for coarse-SN. Validation uses coarse-SN's real output (--coarse-sn).
- enhanced-SN: image + mask-CN's localisation map -> lesion mask (warm start from coarse-SN).
- image-only classifier: the ablation baseline.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from core.analysis.metrics import balanced_accuracy, binary_auc
from core.data.acquisition import acquisition_sources
from core.data.classes import CLASS_CODES, NUM_CLASSES, class_index
from core.data.datasets import SOURCES
from core.models.losses import class_weights, hybrid_loss, mixed_cross_entropy
from core.models.mbdcnn import coarse_probabilities, mask_cn_input, run_chain
from core.models import create_model
from core.imaging.preprocess import Preprocessing
from core.imaging.tensors import CLASSIFIER_SIZE, SEGMENTER_SIZE, normalize_batch, normalize_pixels, pixels
from core.io.weights_io import weights_metadata
from train.augment import AugmentConfig, augment_batch, cutmix, perturb_masks
from train.cache import load_arrays

VAL_BATCH = 64


@dataclass
class Arrays:
    """One split as a stage reads it."""
    images: np.ndarray                 # (N,H,W,3) uint8 at the stage's input size (a memory map)
    labels: torch.Tensor               # (N,) class indices
    sources: np.ndarray                # (N,) "ham10000" / "isic2017" / "acral" / "folder"
    masks: np.ndarray | None = None    # (N,H,W) {0,1} uint8 lesion masks
    aux: torch.Tensor | None = None    # (N,1,h,w): coarse-SN probabilities (mask-CN val) or localisation maps
    repeats: np.ndarray | None = None  # (N,) times each image appears in one training epoch

    def __len__(self) -> int:
        return len(self.labels)


def parse_size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def _repeat_times(spec: str) -> dict[str, int]:
    """"source=n,..." -> {source: n}."""
    return {name.strip(): int(n) for name, n in (part.split("=") for part in spec.split(",") if part.strip())}


def source_repeats(sources: np.ndarray, spec: str, acquisitions: np.ndarray | None = None) -> np.ndarray:
    """Times each training image appears per epoch, from "source=n,..." (sources not named: once). A name may be a
    dataset (ham10000, isic2017, acral) or, given `acquisitions`, an image's acquisition source
    (core.data.acquisition: a HAM10000 clinic such as rosendahl), which wins over its dataset's."""
    times = _repeat_times(spec)
    acquisitions = sources if acquisitions is None else acquisitions
    return np.array([times.get(a, times.get(s, 1)) for s, a in zip(sources, acquisitions)], dtype=int)


def acquisitions_if_named(table: pd.DataFrame, spec: str, data_dir: str) -> np.ndarray | None:
    """The rows' acquisition sources when `spec` (source_repeats) names one that is not a dataset, else None."""
    if not set(_repeat_times(spec)) - set(SOURCES):
        return None
    return acquisition_sources(table, data_dir).to_numpy()


def upstream_images(table: pd.DataFrame, meta: dict, use_cache: bool) -> np.ndarray:
    """A split's images as an upstream network expects them (its input size and preprocessing, from its metadata)."""
    preprocessing = Preprocessing(**json.loads(meta["preprocessing"]))
    images, _ = load_arrays(table, parse_size(meta["input_size"]), preprocessing, False, use_cache)
    return images


def load_upstream(arch: str, path: str) -> tuple[torch.nn.Module, dict]:
    """A trained network from its best.safetensors and what it expects (input size, preprocessing, backbone)."""
    from safetensors.torch import load_file

    if not path:
        raise SystemExit(f"this stage needs --{arch.replace('_', '-')} PATH (a best.safetensors from that stage)")
    meta = weights_metadata(path)
    model = create_model(arch, meta.get("backbone", "efficientnet_lite0"), pretrained=None)
    model.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    return model.eval().requires_grad_(False), meta


class Stage(ABC):
    """One trainable network as the loop sees it. A stage provides batch, loss and validate; the base class holds what
    every stage shares: input size, preprocessing and augmentation from the config, loading a split, building the
    model and the metadata its weight files carry. A subclass names its arch and default_size and overrides
    wants_masks, prepare, load or build_model where it differs."""
    arch = ""
    default_size = (0, 0)
    classifies = False
    cpu_bf16_pays = False   # train.train's amp=auto uses bf16 autocast for this stage on a CPU with bf16 hardware

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.size = parse_size(cfg["image_size"]) if cfg["image_size"] else self.default_size
        self.preprocessing = Preprocessing(cfg["colour_constancy"], cfg["crop_field_of_view"],
                                           cfg["jpeg_quality"] if self.classifies else 0)  # the JPEG step: classifiers
        self.augment = AugmentConfig(
            crop_scale=(cfg["crop_scale_min"], cfg["crop_scale_max"]), rotate_degrees=cfg["rotate_degrees"],
            brightness=cfg["colour_jitter"], contrast=cfg["colour_jitter"], saturation=cfg["colour_jitter"],
            hue=cfg["hue_jitter"], lowres_p=cfg["lowres_p"], cutout_p=cfg["cutout_p"] if self.classifies else 0.0,
            dermatoscope_p=cfg["dermatoscope_p"])
        self.device = torch.device("cpu")
        self.class_weights: torch.Tensor | None = None

    def wants_masks(self, training: bool) -> bool:
        return False

    # ------------------------------------------------------------ model and metadata
    def build_model(self) -> torch.nn.Module:
        return create_model(self.arch, self.cfg["backbone"], self.cfg["pretrained"])

    def metadata(self) -> dict[str, str]:
        """Written into every saved weight file: what later stages, evaluation and the Analyzer need to know."""
        return {"arch": self.arch, "backbone": self.cfg["backbone"], "input_size": f"{self.size[0]}x{self.size[1]}",
                "preprocessing": json.dumps(self.preprocessing.to_card())}

    # ------------------------------------------------------------ data
    def load(self, table: pd.DataFrame, training: bool) -> Arrays:
        images, masks = load_arrays(table, self.size, self.preprocessing, self.wants_masks(training), self.cfg["use_cache"])
        sources = table["source"].to_numpy()
        spec = self.cfg["source_repeats"]
        repeats = (source_repeats(sources, spec, acquisitions_if_named(table, spec, self.cfg["data_dir"]))
                   if training else None)
        return Arrays(images, torch.tensor([class_index(d) for d in table["dx"]]), sources, masks, None, repeats)

    def _pixels(self, arrays: Arrays, idx: np.ndarray) -> torch.Tensor:
        return pixels(torch.from_numpy(np.ascontiguousarray(arrays.images[idx])))

    def prepare(self, train: Arrays) -> None:
        """Called once with the training split before the first step (class weights, ...)."""

    def to(self, device: torch.device) -> "Stage":
        self.device = device
        return self

    # ------------------------------------------------------------ what each stage must provide
    @abstractmethod
    def batch(self, arrays: Arrays, idx: np.ndarray, generator: torch.Generator | None) -> tuple[tuple, object]:
        """(model inputs, target) of the images idx of a split, on the stage's device; augmented when a generator is
        given (training), as they are when it is None (validation)."""

    @abstractmethod
    def loss(self, output: torch.Tensor, target) -> torch.Tensor:
        """The scalar training loss of the model's output against a batch's target."""

    @abstractmethod
    def validate(self, model: torch.nn.Module, val: dict[str, Arrays]) -> dict:
        """Metrics of `model` on each source's validation split, with a "score" (higher is better: it picks
        best.safetensors)."""


# ---------------------------------------------------------------- segmenters
def dice_and_jaccard(logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred = (logits > 0).float().flatten(1)
    truth = masks.flatten(1)
    inter = (pred * truth).sum(1)
    total = pred.sum(1) + truth.sum(1)
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    union = total - inter
    jaccard = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return dice, jaccard


class CoarseSNStage(Stage):
    arch = "coarse_sn"
    default_size = SEGMENTER_SIZE
    cpu_bf16_pays = True    # dense U-Net convolutions: bf16 pays (bench.training); depthwise stay fp32 (train.autocast_policy)

    def wants_masks(self, training: bool) -> bool:
        return True

    def batch(self, arrays: Arrays, idx: np.ndarray, generator: torch.Generator | None):
        x = self._pixels(arrays, idx)
        masks = torch.from_numpy(np.ascontiguousarray(arrays.masks[idx])).unsqueeze(1).float()
        aux = None if arrays.aux is None else arrays.aux[idx].float()
        if generator is not None:
            x, (masks, aux) = augment_batch(x, [masks, aux], self.augment, generator)
            masks = (masks > 0.5).float()
        inputs = (normalize_pixels(x.to(self.device)),) + (() if aux is None else (aux.to(self.device),))
        return inputs, masks.to(self.device)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return hybrid_loss(output.float(), target, self.cfg["rank_lambda"], self.cfg["rank_k"], self.cfg["rank_margin"])

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, val: dict[str, Arrays]) -> dict:
        model.eval()
        metrics, dices = {}, []
        for source, arrays in val.items():
            dice, jaccard = [], []
            for start in range(0, len(arrays), VAL_BATCH):
                idx = np.arange(start, min(start + VAL_BATCH, len(arrays)))
                inputs, masks = self.batch(arrays, idx, None)
                d, j = dice_and_jaccard(model(*inputs).float(), masks)
                dice.append(d.cpu())
                jaccard.append(j.cpu())
            dice, jaccard = torch.cat(dice), torch.cat(jaccard)
            metrics[f"{source}_dice"] = round(float(dice.mean()), 5)
            metrics[f"{source}_jaccard"] = round(float(jaccard.mean()), 5)
            dices.append(float(dice.mean()))
        metrics["score"] = round(float(np.mean(dices)), 5)  # mean Dice over the validation sources
        return metrics


class EnhancedSNStage(CoarseSNStage):
    arch = "enhanced_sn"

    def build_model(self) -> torch.nn.Module:
        model = super().build_model()
        init = self.cfg["init"] or self.cfg["coarse_sn"]
        if init:
            # Warm start from coarse-SN: the same U-Net, only the E-layers are new (a resumed run then loads its
            # checkpoint over these weights).
            from safetensors.torch import load_file

            state = {k: v.float() for k, v in load_file(init).items()}
            missing, unexpected = model.load_state_dict(state, strict=False)
            assert not unexpected and all(k.startswith("e_layers") for k in missing), (missing, unexpected)
        return model

    def metadata(self) -> dict[str, str]:
        return {**super().metadata(), "zero_localisation": str(bool(self.cfg["zero_localisation"]))}

    def load(self, table: pd.DataFrame, training: bool) -> Arrays:
        arrays = super().load(table, training)
        coarse_sn, coarse_meta = load_upstream("coarse_sn", self.cfg["coarse_sn"])
        mask_cn, mask_meta = load_upstream("mask_cn", self.cfg["mask_cn"])
        use_cache = self.cfg["use_cache"]
        chain = run_chain(coarse_sn, mask_cn, upstream_images(table, coarse_meta, use_cache),
                          upstream_images(table, mask_meta, use_cache))
        maps = chain["localisation"]
        arrays.aux = torch.zeros_like(maps) if self.cfg["zero_localisation"] else maps
        return arrays


# ---------------------------------------------------------------- classifiers
def classification_scores(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Balanced accuracy and AUCs of the classes present (one-vs-rest)."""
    present = [k for k in range(NUM_CLASSES) if 0 < (labels == k).sum() < len(labels)]
    aucs = {CLASS_CODES[k]: binary_auc(labels == k, probs[:, k]) for k in present}
    return {"balanced_accuracy": balanced_accuracy(labels, probs.argmax(1)), "auc": aucs,
            "macro_auc": float(np.mean(list(aucs.values()))) if aucs else float("nan")}


class ClassifierStage(Stage):
    arch = "classifier"
    default_size = CLASSIFIER_SIZE
    classifies = True

    def prepare(self, train: Arrays) -> None:
        labels = train.labels.repeat_interleave(torch.from_numpy(train.repeats)) if train.repeats is not None else train.labels
        self.class_weights = class_weights(labels, NUM_CLASSES, self.cfg["class_weight_power"])

    def batch(self, arrays: Arrays, idx: np.ndarray, generator: torch.Generator | None):
        x, labels = self._pixels(arrays, idx), arrays.labels[idx]
        if generator is None:
            return (normalize_pixels(x.to(self.device)),), labels.to(self.device)
        x, _ = augment_batch(x, [], self.augment, generator)
        (x,), target = self.mix([x], labels, generator)
        return (normalize_pixels(x.to(self.device)),), target

    def mix(self, tensors: list[torch.Tensor], labels: torch.Tensor, generator: torch.Generator):
        """CutMix on an augmented training batch when --cutmix-p > 0: the tensors and (labels, partner labels,
        kept share) for the loss; otherwise the tensors and the labels unchanged."""
        if self.cfg["cutmix_p"] <= 0:
            return tensors, labels.to(self.device)
        tensors, partner, keep = cutmix(tensors, self.cfg["cutmix_p"], generator)
        return tensors, (labels.to(self.device), labels[partner].to(self.device), keep.to(self.device))

    def loss(self, output: torch.Tensor, target: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        weight = self.class_weights.to(output.device)
        if isinstance(target, tuple):
            return mixed_cross_entropy(output.float(), *target, weight, self.cfg["label_smoothing"])
        return F.cross_entropy(output.float(), target, weight=weight, label_smoothing=self.cfg["label_smoothing"])

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, val: dict[str, Arrays]) -> dict:
        """Per source: balanced accuracy, macro AUC and each class's AUC (argmax of the raw logits). The score mixes
        both sources: the mean of HAM10000's balanced accuracy and the mean AUC of the other source's classes."""
        model.eval()
        metrics, parts = {}, []
        for source, arrays in val.items():
            probs = []
            for start in range(0, len(arrays), VAL_BATCH):
                idx = np.arange(start, min(start + VAL_BATCH, len(arrays)))
                inputs, _ = self.batch(arrays, idx, None)
                probs.append(torch.softmax(model(*inputs).float(), 1).cpu())
            scores = classification_scores(arrays.labels.numpy(), torch.cat(probs).numpy())
            metrics[f"{source}_balanced_accuracy"] = round(scores["balanced_accuracy"], 5)
            metrics[f"{source}_macro_auc"] = round(scores["macro_auc"], 5)
            for code, auc in scores["auc"].items():
                metrics[f"{source}_auc_{code}"] = round(auc, 5)
            parts.append(scores["balanced_accuracy"] if source == "ham10000" else scores["macro_auc"])
        metrics["score"] = round(float(np.mean(parts)), 5)
        return metrics


class MaskCNStage(ClassifierStage):
    arch = "mask_cn"

    def wants_masks(self, training: bool) -> bool:
        return training  # ground truth for the perturbed mask channel

    def load(self, table: pd.DataFrame, training: bool) -> Arrays:
        arrays = super().load(table, training)
        if not training:  # validation sees coarse-SN's real output, as inference does
            arrays.aux = self.coarse_output(table)
        elif (table["mask_path"] == "").any():
            # Images without a drawn mask (the acral source) get coarse-SN's mask as their "truth", which the
            # perturbation then degrades like any other; nothing else would tell mask-CN where their lesion is.
            missing = np.flatnonzero((table["mask_path"] == "").to_numpy())
            coarse = F.interpolate(self.coarse_output(table.iloc[missing]).float(), size=self.size, mode="bilinear",
                                   align_corners=False)
            masks = np.array(arrays.masks)
            masks[missing] = (coarse[:, 0] > 0.5).numpy().astype(np.uint8)
            arrays.masks = masks
        return arrays

    def coarse_output(self, table: pd.DataFrame) -> torch.Tensor:
        """coarse-SN's probabilities (N,1,h,w) float16 for a table's images, as inference computes them."""
        coarse_sn, meta = load_upstream("coarse_sn", self.cfg["coarse_sn"])
        seg_u8 = upstream_images(table, meta, self.cfg["use_cache"])
        return torch.cat([coarse_probabilities(coarse_sn, normalize_batch(torch.from_numpy(
            np.array(seg_u8[s:s + VAL_BATCH])))).half() for s in range(0, len(table), VAL_BATCH)])

    def batch(self, arrays: Arrays, idx: np.ndarray, generator: torch.Generator | None):
        x, labels = self._pixels(arrays, idx), arrays.labels[idx]
        if generator is not None:
            truth = torch.from_numpy(np.ascontiguousarray(arrays.masks[idx])).unsqueeze(1).float()
            x, (channel,) = augment_batch(x, [perturb_masks(truth, generator)], self.augment, generator)
            (x, channel), target = self.mix([x, channel], labels, generator)
        else:
            channel, target = arrays.aux[idx].float(), labels.to(self.device)
        x4 = mask_cn_input(normalize_pixels(x.to(self.device)), channel.to(self.device))
        return (x4,), target


STAGES = {"coarse_sn": CoarseSNStage, "mask_cn": MaskCNStage, "enhanced_sn": EnhancedSNStage,
          "classifier": ClassifierStage}
