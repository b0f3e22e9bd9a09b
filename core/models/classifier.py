"""mask-CN and the image-only classifier: a timm backbone, GAP + FC over the 7 classes.

mask-CN (Xie et al. 2020) takes 4 channels (RGB + coarse lesion mask); its 4th-channel filters start as the mean
of the ImageNet RGB filters. `class_activation_maps` gives the CAMs that feed the enhanced-SN.
"""
from __future__ import annotations

import timm
import torch
from torch import nn

from core.classes import NUM_CLASSES
from core.models.pretrained import PretrainedUnavailable, load_imagenet


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

    @property
    def target_layer(self) -> nn.Module:
        """The last convolutional block, used for CAMs."""
        return self.net.bn2 if hasattr(self.net, "bn2") else list(self.net.children())[-3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.forward_features(x)
        return self.net.forward_head(features), features

    def class_activation_maps(self, features: torch.Tensor) -> torch.Tensor:
        """CAM_c = sum_k w_ck f_k (Zhou et al. 2016): (B, C, h, w) from (B, K, h, w) features."""
        weight = self.net.get_classifier().weight
        return torch.einsum("ck,bkhw->bchw", weight, features)
