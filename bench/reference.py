"""5. A reference stack typical of public skin-lesion apps, timed interleaved with ours.

smp DeepLabV3+ (ResNet-50 encoder, encoder_weights=None) for the mask, timm resnet50 (pretrained=False) for the
7 classes, pytorch-grad-cam GradCAM on layer4 for the heat map. Random weights (speed does not depend on them),
default (NCHW) memory format and eval mode, the same preprocessing as ours (core.imaging.tensors.image_to_batch).
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import torch

from bench.common import summary


class ReferenceStack:
    def __init__(self, seg_size: tuple[int, int], cls_size: tuple[int, int]):
        import segmentation_models_pytorch as smp
        import timm

        torch.manual_seed(0)
        self.seg_size, self.cls_size = seg_size, cls_size
        self.segmenter = smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=1).eval()
        self.classifier = timm.create_model("resnet50", pretrained=False, num_classes=7).eval()
        self.target_layers = [self.classifier.layer4[-1]]

    def analyze(self, rgb: np.ndarray) -> dict:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        from core.imaging.tensors import image_to_batch

        h, w = rgb.shape[:2]
        with torch.inference_mode():
            seg_x = image_to_batch(rgb, self.seg_size).contiguous()
            cls_x = image_to_batch(rgb, self.cls_size).contiguous()
            probs = torch.sigmoid(self.segmenter(seg_x))[0, 0].numpy()
            mask = np.where(cv2.resize(probs, (w, h)) > 0.5, 255, 0).astype(np.uint8)
            top = int(torch.softmax(self.classifier(cls_x), 1).argmax())
        x = cls_x.clone().requires_grad_(True)
        with GradCAM(model=self.classifier, target_layers=self.target_layers) as cam:
            heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(top)])[0]
        self.classifier.zero_grad(set_to_none=True)
        return {"mask": mask, "cam": cv2.resize(heat, (w, h)), "label": top}

    def flops(self, rgb: np.ndarray) -> dict:
        from bench.flops import count_flops
        from core.imaging.tensors import image_to_batch

        seg_x = image_to_batch(rgb, self.seg_size).contiguous()
        cls_x = image_to_batch(rgb, self.cls_size).contiguous()
        with torch.no_grad():
            out = {"segmenter": count_flops(lambda: self.segmenter(seg_x)),
                   "classifier": count_flops(lambda: self.classifier(cls_x))}
        out["analysis_cam"] = count_flops(lambda: self.analyze(rgb))
        return out


def compare(analyzer, rgbs: list[np.ndarray], iterations: int, warmup: int = 1) -> dict:
    """Ours (Analyzer.analyze with Grad-CAM) vs the reference stack at our sizes and at 224x224, interleaved:
    every iteration runs all three once, rotating the order, so load drift hits each alike."""
    contenders = {
        "ours": lambda rgb: analyzer.analyze(rgb, cam=True, cam_method="Grad-CAM"),
        "reference_same_size": ReferenceStack(analyzer.segmenter_size, analyzer.classifier_size).analyze,
        "reference_224": ReferenceStack((224, 224), (224, 224)).analyze,
    }
    refs = {"reference_same_size": contenders["reference_same_size"].__self__,
            "reference_224": contenders["reference_224"].__self__}
    names = list(contenders)
    for i in range(max(warmup, 1)):
        for name in names:
            contenders[name](rgbs[i % len(rgbs)])
    times = {name: [] for name in names}
    for i in range(iterations):
        rgb = rgbs[i % len(rgbs)]
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            contenders[name](rgb)
            times[name].append(time.perf_counter() - start)
    out = {name: summary(v) for name, v in times.items()}
    for name in refs:
        out[name]["ratio_vs_ours_p50"] = out[name]["p50_ms"] / out["ours"]["p50_ms"]
        paired = np.asarray(times[name]) / np.asarray(times["ours"])
        out[name]["paired_ratio_median"] = float(np.median(paired))
        out[name]["flops"] = refs[name].flops(rgbs[0])
        out[name]["sizes"] = {"segmenter": list(refs[name].seg_size), "classifier": list(refs[name].cls_size)}
    out["iterations"] = iterations
    out["what"] = ("full analysis of one decoded image: preprocess + segmentation + classification + Grad-CAM "
                   "(ours also runs enhanced-SN, OOD and measurements)")
    return out
