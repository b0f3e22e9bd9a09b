"""Analyzer: the one inference entry point (app, batch page, predict CLI, benchmarks).

    a = Analyzer.load("weights")
    r = a.analyze(rgb)                  # rgb: HxWx3 uint8, any size

Pipeline (MB-DCNN): coarse-SN -> mask-CN on image + coarse mask -> localisation map from mask-CN's CAM ->
enhanced-SN -> refined mask. Probabilities are softmax((logits + offsets) / T), offsets (class-prior logit
adjustment) and T fitted on validation (see the model card's decision_rule); the OOD flag is a
Mahalanobis distance of mask-CN's pooled features to the training classes, thresholded on validation.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from core.classes import CLASS_CODES, NUM_CLASSES
from core.models import create_model
from core.pipeline import localisation_map, mask_cn_input
from core.ood import OODDetector
from core.tensors import CLASSIFIER_SIZE, SEGMENTER_SIZE, image_to_batch, resize_rgb
from core.weights_io import WeightsIntegrityError, load_verified, read_model_card

NETWORK_FILES = {"coarse_sn": "coarse_sn.safetensors", "mask_cn": "mask_cn.safetensors", "enhanced_sn": "enhanced_sn.safetensors"}
OOD_FILE = "ood.safetensors"
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass
class AnalysisResult:
    mask: np.ndarray                 # HxW uint8 0/255, enhanced-SN, input size
    coarse_mask: np.ndarray          # HxW uint8 0/255, coarse-SN
    probs: dict[str, float]          # calibrated, sums to 1
    label: str
    uncertainty: float               # normalised predictive entropy in [0, 1]
    ood: bool
    ood_score: float
    ood_reason: str
    measurements: dict
    cam: np.ndarray | None = None    # HxW float32 [0, 1] for cam_class
    cam_class: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def top3(self) -> list[tuple[str, float]]:
        return sorted(self.probs.items(), key=lambda kv: kv[1], reverse=True)[:3]


class Analyzer:
    def __init__(self, networks: dict[str, torch.nn.Module], card: dict, ood: OODDetector | None, device: str = "cpu"):
        self.coarse_sn = networks["coarse_sn"]
        self.mask_cn = networks["mask_cn"]
        self.enhanced_sn = networks["enhanced_sn"]
        self.card = card
        self.ood_detector = ood
        self.device = device
        self.temperature = float(card.get("temperature", 1.0))
        self.logit_offsets = torch.tensor(card.get("logit_offsets", [0.0] * NUM_CLASSES), dtype=torch.float32)
        self.version = str(card.get("version", "unversioned"))
        # One analysis at a time: the models are shared between sessions, CAM hooks are per-model state, and on a
        # 2-core machine one analysis with all threads beats several fighting for the cores.
        self._lock = threading.Lock()

    # ------------------------------------------------------------ loading
    @classmethod
    def load(cls, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, device: str | None = None) -> "Analyzer":
        weights_dir = Path(weights_dir)
        card = read_model_card(weights_dir)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        backbone = card.get("backbone", "efficientnet_lite0")
        networks = {}
        for arch, file_name in NETWORK_FILES.items():
            model = create_model(arch, backbone, pretrained=None)
            state = load_verified(weights_dir, file_name, card)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise WeightsIntegrityError(f"{weights_dir / file_name}: does not fit the {arch} architecture ({exc})") from exc
            networks[arch] = model.eval().to(device).to(memory_format=torch.channels_last)
        ood = None
        if OOD_FILE in card.get("files", {}):
            image_threshold = card["ood"].get("image_threshold")
            ood = OODDetector(load_verified(weights_dir, OOD_FILE, card), float(card["ood"]["threshold"]),
                              None if image_threshold is None else float(image_threshold))
        return cls(networks, card, ood, device)

    # ------------------------------------------------------------ analysis
    def analyze(self, rgb: np.ndarray, cam: bool = False, cam_method: str = "Grad-CAM", cam_class: str | None = None,
                mm_per_pixel: float | None = None) -> AnalysisResult:
        rgb = _check_rgb(rgb)
        with self._lock:
            return self._analyze(rgb, cam, cam_method, cam_class, mm_per_pixel)

    def _analyze(self, rgb, cam, cam_method, cam_class, mm_per_pixel) -> AnalysisResult:
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = now - clock
            clock = now

        height, width = rgb.shape[:2]
        with torch.inference_mode():
            seg_x = image_to_batch(rgb, SEGMENTER_SIZE).to(self.device)
            cls_small = resize_rgb(rgb, CLASSIFIER_SIZE)
            cls_x = image_to_batch(cls_small, CLASSIFIER_SIZE).to(self.device)
            lap("preprocess")
            coarse = torch.sigmoid(self.coarse_sn(seg_x))
            lap("coarse_sn")
            x4 = mask_cn_input(cls_x, coarse)
            logits, features = self.mask_cn.forward_with_features(x4)
            pooled = self.mask_cn.net.forward_head(features, pre_logits=True)
            probs = F.softmax((logits.float().cpu() + self.logit_offsets) / self.temperature, dim=1)[0]
            top = int(probs.argmax())
            loc = localisation_map(self.mask_cn.class_activation_maps(features), torch.tensor([top]))
            lap("mask_cn")
            enhanced = torch.sigmoid(self.enhanced_sn(seg_x, loc))
            lap("enhanced_sn")
            mask = _to_input_mask(enhanced, height, width)
            coarse_mask = _to_input_mask(coarse, height, width)
            ood_score, ood, reason = self._ood(pooled, cls_small)
        entropy = float(-(probs * probs.clamp(min=1e-12).log()).sum() / np.log(NUM_CLASSES))
        measurements = _measure(mask, rgb, mm_per_pixel)
        lap("measurements")
        result = AnalysisResult(
            mask=mask, coarse_mask=coarse_mask, probs={c: float(p) for c, p in zip(CLASS_CODES, probs)},
            label=CLASS_CODES[top], uncertainty=min(max(entropy, 0.0), 1.0), ood=ood, ood_score=ood_score,
            ood_reason=reason, measurements=measurements, timings=timings,
        )
        if cam:
            result.cam_class = cam_class or result.label
            result.cam = self._cam(x4, CLASS_CODES.index(result.cam_class), cam_method, (height, width))
            lap("cam")
        timings["total"] = sum(timings.values())
        return result

    def _ood(self, pooled: torch.Tensor, rgb_small: np.ndarray) -> tuple[float, bool, str]:
        if self.ood_detector is None:
            return 0.0, False, ""
        return self.ood_detector.check(pooled, rgb_small)

    def _cam(self, x4: torch.Tensor, class_index: int, method: str, size: tuple[int, int]) -> np.ndarray:
        from core.cam import compute_cam  # grad-cam is imported only when a CAM is asked for

        with torch.enable_grad():
            return compute_cam(self.mask_cn, x4.clone(), [self.mask_cn.target_layer], class_index, method, output_size=size)

    def cam_for(self, rgb: np.ndarray, class_code: str, method: str = "Grad-CAM") -> np.ndarray:
        """A CAM for any class and method without re-running the whole analysis."""
        rgb = _check_rgb(rgb)
        with self._lock:
            with torch.inference_mode():
                seg_x = image_to_batch(rgb, SEGMENTER_SIZE).to(self.device)
                coarse = torch.sigmoid(self.coarse_sn(seg_x))
                x4 = mask_cn_input(image_to_batch(rgb, CLASSIFIER_SIZE).to(self.device), coarse)
            return self._cam(x4, CLASS_CODES.index(class_code), method, rgb.shape[:2])


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError("expected an HxWx3 uint8 RGB array (use core.intake.load_image for files)")
    if min(rgb.shape[:2]) < 8:
        raise ValueError(f"image too small to analyse: {rgb.shape[1]}x{rgb.shape[0]}")
    return np.ascontiguousarray(rgb)


def _to_input_mask(probs: torch.Tensor, height: int, width: int) -> np.ndarray:
    resized = cv2.resize(probs[0, 0].float().cpu().numpy(), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.where(resized > 0.5, 255, 0).astype(np.uint8)


def _measure(mask: np.ndarray, rgb: np.ndarray, mm_per_pixel: float | None) -> dict:
    from core.measure import measure_lesion

    return measure_lesion(mask, rgb, mm_per_pixel)
