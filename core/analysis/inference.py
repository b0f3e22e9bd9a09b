"""Analyzer: the one inference entry point (app, batch page, predict CLI, benchmarks).

    a = Analyzer.load("weights")
    r = a.analyze(rgb)                  # rgb: HxWx3 uint8, any size

Pipeline (MB-DCNN, core.models.mbdcnn.mbdcnn_forward): coarse-SN -> mask-CN on image + coarse mask (under the card's
test-time-augmentation views) -> localisation map from mask-CN's CAM -> enhanced-SN -> refined mask. Everything
the screens say comes from rules in the model card, fitted on validation data by calibration.evaluate:
- probabilities: core.decisions.decision_rule (TTA views, logit offsets, temperature);
- the melanoma referral: core.decisions.referral (one threshold on a melanoma score);
- uncertainty in words: core.decisions.uncertainty (low / moderate / high, each with its measured error rate);
- out-of-distribution: core.decisions.ood with the trained dermoscopy check (clinical_photo / not_skin: no diagnosis is shown;
  unusual: the diagnosis is shown greyed);
- image quality: core.decisions.image_quality (the card's checks, e.g. out of focus, lesion cut by the border: the diagnosis is
  shown greyed with one sentence; not run on a refused image);
- similar confirmed cases: core.lesion.retrieval (nearest reference cases in mask-CN's feature space).
"""
from __future__ import annotations

import copy
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.analysis.cam import LINEAR_HEAD_CAMS, cam_from_class_maps
from core.data.classes import CLASS_CODES
from core.decisions.conformal import PredictionSets
from core.decisions.context_head import ContextHead
from core.decisions.decision_rule import DecisionRule
from core.models.cpu_inference import can_pack, fold_batchnorm, pack_convolutions
from core.models.mbdcnn import mbdcnn_forward, view_groups
from core.models import create_model
from core.decisions.dermoscopy_check import DermoscopyCheck
from core.decisions.image_quality import CHECK_KINDS, QualityChecks
from core.decisions.ood import OODAssessment, OODDetector, chroma, imagenet_backbone, picture_measures
from core.decisions.ood_levels import GREYED_LEVELS, REFUSED_LEVELS
from core.data.patient_context import PatientContext
from core.models.precision import name_of as precision_name, resolve as resolve_precision
from core.imaging.preprocess import Box, Preprocessing, mask_to_image, network_box, network_image
from core.decisions.referral import BELOW_TEXT, REFER_TEXT, ReferralRule
from core.lesion.retrieval import CaseIndex
from core.imaging.tensors import normalize_batch
from core.decisions.triage import TriageRule, Verdict
from core.imaging.tta import FLIP_VIEWS
from core.decisions.uncertainty import UncertaintyLevels, probability_scores
from core.decisions.model_card import ModelCard, load_card
from core.io.weights_io import DEFAULT_WEIGHTS_DIR, NETWORK_FILES, WeightsIntegrityError, load_verified

OOD_FILE = "ood.safetensors"
CHECK_FILE = "dermoscopy_check.safetensors"


@dataclass
class AnalysisResult:
    mask: np.ndarray                 # HxW uint8 0/255, enhanced-SN, input size
    coarse_mask: np.ndarray          # HxW uint8 0/255, coarse-SN
    probs: dict[str, float]          # the decision rule's probabilities (sum to 1)
    label: str                       # top class
    mel_score: float                 # the referral rule's melanoma score
    refer: bool                      # mel_score >= the card's referral threshold
    referral_threshold: float
    uncertainty_score: float
    uncertainty_level: str           # low | moderate | high
    uncertainty_text: str            # the level with its measured validation error rate
    ood_level: str                   # core.decisions.ood.OOD_LEVELS
    ood_score: float                 # the distance the "unusual" level thresholds (card: ood.unusual_score)
    ood_reason: str                  # one sentence ("" when in distribution)
    measurements: dict
    similar: pd.DataFrame | None = None   # nearest reference cases (core.lesion.retrieval), nearest first
    cam: np.ndarray | None = None    # HxW float32 [0, 1] for cam_class
    cam_class: str | None = None
    context_used: bool = False       # the probabilities include the card's patient-context shift
    triage: Verdict | None = None    # the one verdict at the top of the result (core.decisions.triage, card thresholds)
    view_probs: np.ndarray | None = None  # (V, C) each test-time view's own probabilities (None: one view)
    level_without_context: str | None = None  # the verdict's level had the patient context not been used
    prediction_set: list[str] = field(default_factory=list)  # conformal set (core.decisions.conformal), most probable first
    quality: tuple[str, ...] = ()    # the image-quality checks that fired (core.decisions.image_quality.CHECK_KINDS names)
    quality_text: str = ""           # one sentence saying which ("" when none fired)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def top3(self) -> list[tuple[str, float]]:
        return sorted(self.probs.items(), key=lambda kv: kv[1], reverse=True)[:3]

    @property
    def diagnosis_shown(self) -> bool:
        """False for an image that is not dermoscopy (a clinical photo, not skin): no class, probability, referral,
        CAM, similar case or measurement may be shown for it."""
        return self.ood_level not in REFUSED_LEVELS

    @property
    def greyed(self) -> bool:
        """The diagnosis is shown greyed: an unusual image or one that may be a camera photo, or an image-quality check
        fired."""
        return self.ood_level in GREYED_LEVELS or bool(self.quality)

    @property
    def referral_text(self) -> str:
        return REFER_TEXT if self.refer else BELOW_TEXT


class Analyzer:
    def __init__(self, networks: dict[str, torch.nn.Module], card: ModelCard, ood: OODDetector | None,
                 cases: CaseIndex | None = None, device: str = "cpu", pack: bool = True, engine: str = "torch",
                 engine_networks: dict | None = None):
        """pack: on a CPU, lay the convolution weights out for oneDNN with the activations fused
        (core.models.cpu_inference; in place). False keeps plain modules (bench.flops counts their FLOPs).
        engine_networks: the three networks' forward passes run by `engine` (core.analysis.onnx_engine) instead."""
        engine_networks = engine_networks or {}
        self.engine = engine
        self.coarse_sn = engine_networks.get("coarse_sn", networks["coarse_sn"])
        self.mask_cn = networks["mask_cn"]  # plain modules: the CAM methods that need gradients run on it
        # what the analysis' forward passes run (packed on a CPU, or the engine's)
        self.mask_cn_forward = engine_networks.get("mask_cn", self.mask_cn)
        self.enhanced_sn = engine_networks.get("enhanced_sn", networks["enhanced_sn"])
        self.imagenet = networks.get("imagenet")  # generic ImageNet features for the not-dermoscopy check
        self.card = card
        self.ood_detector = ood
        self.cases = cases
        self.device = device
        self.version = card.version
        self.precision = precision_name(getattr(self.mask_cn, "compute_dtype", torch.float32))  # core.models.precision
        self.preprocessing = Preprocessing.from_card(card.preprocessing, "segmenter")
        self.classifier_preprocessing = Preprocessing.from_card(card.preprocessing, "classifier")
        self.classifier_size, self.segmenter_size = card.input_size.classifier, card.input_size.segmenter
        self.rule = DecisionRule.from_card(card)
        self.context_head = ContextHead.from_card(card)  # None unless validation showed a gain (the card says)
        self.referral = ReferralRule.from_card(card)
        self.triage = TriageRule.from_card(card)
        self.prediction_sets = PredictionSets.from_card(card)
        self.quality_checks = QualityChecks.from_card(card)
        self.uncertainty = UncertaintyLevels.from_card(card)
        self.seg_views = FLIP_VIEWS if card.segmentation_views == 4 else (0,)
        self.similar_cases, self.knn_k = card.retrieval.k, card.retrieval.knn_k
        if pack and can_pack(device, getattr(self.mask_cn, "compute_dtype", torch.float32)):
            self._pack_convolutions()
        # One analysis at a time per Analyzer: CAM hooks are per-model state (serve several users with replicas).
        self._lock = threading.Lock()
        # (input key, mask-CN input, class activation maps) of the latest analysis: cam_for() on the same image (what
        # the Analyze page does right after analyze()) reuses them instead of re-running coarse-SN and mask-CN.
        self._last: tuple[bytes, torch.Tensor, torch.Tensor] | None = None

    def _pack_convolutions(self) -> None:
        """Each network's convolutions packed for the input shapes the analysis gives them; mask-CN as a copy."""
        def example(*shape: int) -> torch.Tensor:
            return torch.zeros(shape).contiguous(memory_format=torch.channels_last)

        (seg_h, seg_w), (cls_h, cls_w) = self.segmenter_size, self.classifier_size
        if isinstance(self.coarse_sn, torch.nn.Module):  # not when an engine runs them
            pack_convolutions(self.coarse_sn, example(1, 3, seg_h, seg_w))
        localisation = torch.zeros(1, 1, -(-cls_h // 32), -(-cls_w // 32))  # mask-CN's CAM grid
        if isinstance(self.enhanced_sn, torch.nn.Module):
            pack_convolutions(self.enhanced_sn, example(1, 3, seg_h, seg_w), localisation)
        views = len(view_groups(self.rule.view_ids)[0])
        if self.mask_cn_forward is self.mask_cn:
            self.mask_cn_forward = pack_convolutions(copy.deepcopy(self.mask_cn), example(views, 4, cls_h, cls_w))
        if self.imagenet is not None:
            pack_convolutions(self.imagenet, example(1, 3, cls_h, cls_w))

    # ------------------------------------------------------------ loading
    @classmethod
    def load(cls, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, device: str | None = None,
             precision: str | None = None, pack: bool = True, engine: str | None = None,
             card: ModelCard | None = None) -> "Analyzer":
        """precision: core.models.precision.CHOICES; default LESIONLENS_PRECISION or "auto" (bf16 on a CPU with AMX or
        AVX512-BF16). pack: see __init__. engine: core.analysis.onnx_engine.ENGINES; default LESIONLENS_ENGINE or
        torch (on a GPU always torch). card: the folder's model card (core.decisions.model_card.load_card: a card
        lacking a section raises ModelCardError), or one calibration is about to write."""
        from core.analysis.onnx_engine import chosen_engine

        weights_dir = Path(weights_dir)
        card = card if card is not None else load_card(weights_dir)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        engine = chosen_engine(engine) if device == "cpu" else "torch"
        dtype = resolve_precision(precision or os.environ.get("LESIONLENS_PRECISION", "auto"), device)
        if engine == "onnxruntime":
            dtype = torch.float32  # ONNX Runtime computes these graphs in fp32; the torch copies (CAMs) match it
        networks = {}
        for arch, file_name in NETWORK_FILES.items():
            model = create_model(arch, card.backbones[arch], pretrained=None)
            state = load_verified(weights_dir, file_name, card)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise WeightsIntegrityError(f"{weights_dir / file_name}: does not fit the {arch} architecture ({exc})") from exc
            # Inference only: BN folded into the convs, and no parameter needs a gradient (a CAM's backward pass
            # then computes only the activation gradients it uses, not a weight gradient for every layer).
            model = fold_batchnorm(model.eval()).requires_grad_(False).cast_for_inference(dtype)
            networks[arch] = model.to(device).to(memory_format=torch.channels_last)
        check = DermoscopyCheck.from_tensors(load_verified(weights_dir, CHECK_FILE, card), card.dermoscopy_check.threshold,
                                             card.dermoscopy_check.flag_below)
        ood = OODDetector.from_card(load_verified(weights_dir, OOD_FILE, card), card, check)
        networks["imagenet"] = fold_batchnorm(imagenet_backbone()).to(device)
        engine_nets = None
        if engine != "torch":
            from core.analysis.onnx_engine import engine_networks

            engine_nets = engine_networks(engine, weights_dir, card, networks["mask_cn"], torch.get_num_threads(),
                                          precision_name(dtype))
        return cls(networks, card, ood, CaseIndex.load(weights_dir, card), device, pack, engine, engine_nets)

    def warm_up(self) -> AnalysisResult:
        """One analysis with a CAM of a made-up brown lesion on skin, so that the first real one does not pay the
        one-off costs (oneDNN builds each convolution's kernels on first use; lazy imports): without it the first
        analysis after a load took 1.4 s instead of 0.08 s. Every network runs, the lesion is segmented and measured
        and gets a CAM; the dermoscopy check refuses a drawing as not skin, so the one stage a refused image skips,
        the image-quality checks, is run on it here directly."""
        rows, cols = np.mgrid[:450, :600]
        lesion = ((rows - 225) / 110.0) ** 2 + ((cols - 300) / 150.0) ** 2 < 1
        rgb = np.where(lesion[..., None], (120, 75, 55), (225, 175, 150)).astype(np.uint8)
        result = self.analyze(rgb, cam=True)
        if not result.diagnosis_shown:
            self.quality_checks.assess(rgb, result.mask, self.network_images(rgb)[2])
        return result

    # ------------------------------------------------------------ analysis
    def analyze(self, rgb: np.ndarray, cam: bool = False, cam_method: str = "Grad-CAM", cam_class: str | None = None,
                mm_per_pixel: float | None = None, context: PatientContext | None = None) -> AnalysisResult:
        """context: the patient's age / sex / site; it changes the probabilities only when the model card's context
        head is in use (result.context_used says whether it did)."""
        rgb = _check_rgb(rgb)
        shift = None
        if self.context_head is not None and context is not None and context.given:
            shift = self.context_head.shift([context])
        with self._lock:
            return self._analyze(rgb, cam, cam_method, cam_class, mm_per_pixel, shift)

    def _analyze(self, rgb, cam, cam_method, cam_class, mm_per_pixel, shift) -> AnalysisResult:
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = now - clock
            clock = now

        height, width = rgb.shape[:2]
        seg_small, cls_small, box = self.network_images(rgb)
        seg_x = normalize_batch(torch.from_numpy(seg_small)[None]).to(self.device)
        cls_x = normalize_batch(torch.from_numpy(cls_small)[None]).to(self.device)
        lap("preprocess")
        with torch.inference_mode():
            out = mbdcnn_forward(self.coarse_sn, self.mask_cn_forward, self.enhanced_sn, seg_x, cls_x,
                                 self.rule.view_ids, self.seg_views)
        self._last = (_input_key(seg_small, cls_small), out["x4"], out["class_maps"])
        lap("networks")
        logits = out["logits"].cpu().numpy()
        probs = self.rule.probabilities(logits, shift)[0]
        view_probs = self._view_probabilities(logits, shift)
        mask = _to_input_mask(out["enhanced"], box, height, width)
        coarse_mask = _to_input_mask(out["coarse"], box, height, width)
        ood = self._ood(out["pooled"], cls_x, cls_small)
        similar = self.cases.nearest(out["pooled"], self.similar_cases) if self.cases is not None else None
        score = self._uncertainty_score(view_probs, probs, out["pooled"])
        level = self.uncertainty.level(score)
        mel_score = float(self.referral.score_of(probs))
        lap("rules")
        quality = self.quality_checks.assess(rgb, mask, box) if ood.level not in REFUSED_LEVELS else None
        fired = quality.fired if quality is not None else ()
        problems = tuple(CHECK_KINDS[name].phrase for name in fired)
        triage = self.triage.verdict(probs, level, ood.level, ood.reason, problems, view_probs=view_probs)
        level_without_context = None
        if shift is not None:  # the same image without the context: does the context decide the verdict?
            plain, plain_views = self.rule.probabilities(logits)[0], self._view_probabilities(logits, None)
            plain_level = self.uncertainty.level(self._uncertainty_score(plain_views, plain, out["pooled"]))
            level_without_context = self.triage.verdict(plain, plain_level, ood.level, ood.reason, problems).level
        lap("quality")
        result = AnalysisResult(
            mask=mask, coarse_mask=coarse_mask, probs={c: float(p) for c, p in zip(CLASS_CODES, probs)},
            label=CLASS_CODES[int(probs.argmax())], mel_score=mel_score, refer=mel_score >= self.referral.threshold,
            referral_threshold=self.referral.threshold, uncertainty_score=score, uncertainty_level=level,
            uncertainty_text=self.uncertainty.sentence(level), ood_level=ood.level, ood_score=ood.score,
            ood_reason=ood.reason, measurements=_measure(mask, rgb, mm_per_pixel), similar=similar,
            context_used=shift is not None, timings=timings, triage=triage, view_probs=view_probs,
            level_without_context=level_without_context,
            prediction_set=self.prediction_sets.classes(probs) if self.prediction_sets is not None else [],
            quality=fired, quality_text=quality.sentence if quality is not None else "")
        lap("measurements")
        if cam:
            result.cam_class = cam_class or result.label
            result.cam = self._cam(out["x4"], out["class_maps"], CLASS_CODES.index(result.cam_class), cam_method,
                                   (height, width), box)
            lap("cam")
        timings["total"] = sum(timings.values())
        return result

    def _ood(self, pooled: torch.Tensor, cls_x: torch.Tensor, cls_small: np.ndarray) -> OODAssessment:
        if self.ood_detector is None:
            return OODAssessment("in", 0.0, "")
        with torch.inference_mode():
            generic = self.imagenet(cls_x).float().cpu()
        case_distance = self.cases.knn_distance(pooled, self.knn_k) if self.cases is not None else None
        return self.ood_detector.assess(self.ood_detector.scores(pooled.cpu(), generic, [chroma(cls_small)], case_distance,
                                                                 [picture_measures(cls_small)]))

    def _view_probabilities(self, logits: np.ndarray, shift) -> np.ndarray | None:
        """(V, C): each test-time view's probabilities under the decision rule (None for a single view)."""
        if len(logits) < 2:
            return None
        single = self.rule.single_view()
        return np.stack([single.probabilities(v[None], shift)[0] for v in logits])

    def _uncertainty_score(self, view_probs: np.ndarray | None, probs: np.ndarray, pooled: torch.Tensor) -> float:
        """The card's uncertainty score for one image (see core.decisions.uncertainty)."""
        name = self.uncertainty.score
        if name == "knn_distance":
            return float(self.cases.knn_distance(pooled, self.knn_k)[0])
        views = None if view_probs is None else view_probs[:, None, :]
        return float(probability_scores(probs[None], views)[name][0])

    def _cam(self, x4: torch.Tensor, class_maps: torch.Tensor | None, class_index: int, method: str,
             size: tuple[int, int], box: Box, progress=None) -> np.ndarray:
        """The CAM over the network's input (the field-of-view crop), placed onto the whole image (0 outside)."""
        crop = (box[1] - box[0], box[3] - box[2])
        if method in LINEAR_HEAD_CAMS and class_maps is not None:
            heat = cam_from_class_maps(class_maps, class_index, tuple(x4.shape[-2:]), crop)
        else:
            from core.analysis.gradient_cam import compute_cam  # pytorch-grad-cam: only when such a method is asked for

            with torch.enable_grad():
                heat = compute_cam(self.mask_cn, x4.clone(), [self.mask_cn.target_layer], class_index, method,
                                   output_size=crop, progress=progress)
        return heat if crop == tuple(size) else mask_to_image(heat, box, size)

    def network_images(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, Box]:
        """The segmenters' and the classifier's uint8 inputs (core.imaging.preprocess.network_image, as in training) and
        the field-of-view box they were cut from."""
        box = network_box(rgb, self.preprocessing)
        return (network_image(rgb, self.segmenter_size, self.preprocessing, box),
                network_image(rgb, self.classifier_size, self.classifier_preprocessing, box), box)

    def cam_for(self, rgb: np.ndarray, class_code: str, method: str = "Grad-CAM", progress=None) -> np.ndarray:
        """A CAM for any class and method without re-running the whole analysis; `progress(share done)` is called
        while a slow method (Score-CAM) runs."""
        rgb = _check_rgb(rgb)
        class_index = CLASS_CODES.index(class_code)
        with self._lock:
            seg_u8, cls_u8, box = self.network_images(rgb)
            key = _input_key(seg_u8, cls_u8)
            if self._last is not None and self._last[0] == key:
                _, x4, class_maps = self._last
            else:
                with torch.inference_mode():
                    out = mbdcnn_forward(self.coarse_sn, self.mask_cn_forward, self.enhanced_sn,
                                         normalize_batch(torch.from_numpy(seg_u8)[None]).to(self.device),
                                         normalize_batch(torch.from_numpy(cls_u8)[None]).to(self.device), (0,),
                                         self.seg_views, with_enhanced=False)
                x4, class_maps = out["x4"], out["class_maps"]
                self._last = (key, x4, class_maps)
            return self._cam(x4, class_maps if method in LINEAR_HEAD_CAMS else None, class_index, method,
                             rgb.shape[:2], box, progress)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError("expected an HxWx3 uint8 RGB array (use core.io.intake.load_image for files)")
    if min(rgb.shape[:2]) < 8:
        raise ValueError(f"image too small to analyse: {rgb.shape[1]}x{rgb.shape[0]}")
    return np.ascontiguousarray(rgb)


def _input_key(seg_u8: np.ndarray, cls_u8: np.ndarray) -> bytes:
    """Identifies what the networks see (the two resized images), so a cached result is reused only for them."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(seg_u8).data)
    digest.update(np.ascontiguousarray(cls_u8).data)
    return digest.digest()


def _to_input_mask(probs: torch.Tensor, box: Box, height: int, width: int) -> np.ndarray:
    full = mask_to_image(probs[0, 0].float().cpu().numpy(), box, (height, width))
    return np.where(full > 0.5, 255, 0).astype(np.uint8)


def _measure(mask: np.ndarray, rgb: np.ndarray, mm_per_pixel: float | None) -> dict:
    from core.lesion.lesion_measurements import measure_lesion

    return measure_lesion(mask, rgb, mm_per_pixel)
