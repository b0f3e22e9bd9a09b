"""mask-CN and the image-only classifier: a timm backbone, GAP + FC over the 7 classes.

mask-CN (Xie et al. 2020) takes 4 channels (RGB + coarse lesion mask); its 4th-channel filters start as the mean
of the ImageNet RGB filters. `class_activation_maps` gives the CAMs that feed the enhanced-SN.
"""
from __future__ import annotations

import timm
import torch
from torch import nn

from core.data.classes import NUM_CLASSES
from core.models.pretrained import PretrainedUnavailable, load_imagenet


class _Float32(nn.Module):
    """Hands a reduced-precision backbone's features on as float32 (head, CAMs and CAM activations stay fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


class LesionClassifier(nn.Module):
    def __init__(self, backbone: str = "efficientnet_lite0", in_chans: int = 3, pretrained: str | None = "package",
                 num_classes: int = NUM_CLASSES, drop_rate: float = 0.2):
        super().__init__()
        self.in_chans = in_chans
        use_hub = pretrained == "hub"
        self.net = timm.create_model(backbone, pretrained=use_hub, in_chans=in_chans,
                                     num_classes=num_classes, drop_rate=drop_rate)
        if pretrained == "package":
            load_imagenet(self.net, backbone, skip_suffixes=("classifier.weight", "classifier.bias"))
        self.compute_dtype = torch.float32

    def cast_for_inference(self, dtype: torch.dtype) -> "LesionClassifier":
        """Run the backbone in `dtype` (core.models.precision: bf16 on a CPU with bf16 hardware). Inputs are cast on the way in; the
        last feature layer (the CAM target layer) hands float32 on, so the logits, the CAMs and every CAM method's
        activations and gradients are float32. For inference only (after fold_batchnorm)."""
        if dtype != self.compute_dtype:
            self.net.to(dtype)
            self.net.get_classifier().float()
            self.net.bn2 = nn.Sequential(self.net.bn2, _Float32())
            self.compute_dtype = dtype
        return self

    @property
    def target_layer(self) -> nn.Module:
        """The last convolutional block, used for CAMs."""
        return self.net.bn2 if hasattr(self.net, "bn2") else list(self.net.children())[-3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.compute_dtype))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.forward_features(x.to(self.compute_dtype))
        return self.net.forward_head(features), features

    def class_activation_maps(self, features: torch.Tensor) -> torch.Tensor:
        """CAM_c = sum_k w_ck f_k (Zhou et al. 2016): (B, C, h, w) from (B, K, h, w) features."""
        weight = self.net.get_classifier().weight
        return torch.einsum("ck,bkhw->bchw", weight, features)
