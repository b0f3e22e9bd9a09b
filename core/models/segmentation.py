"""coarse-SN and enhanced-SN: smp U-Net over a timm (`tu-`) encoder, 1 output channel (lesion logit).

enhanced-SN adds the paper's E-layer: at every encoder stage the features are concatenated with mask-CN's
lesion localisation map (resized), then fused back to the stage's width by 1x1 conv + BN + ReLU.
"""
from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from core.models.pretrained import load_imagenet

DECODER_CHANNELS = (128, 64, 32, 16, 8)


def _unet(backbone: str, pretrained: str | None) -> smp.Unet:
    net = smp.Unet(f"tu-{backbone}", encoder_weights="imagenet" if pretrained == "hub" else None,
                   classes=1, decoder_channels=DECODER_CHANNELS)
    if pretrained == "package":
        load_imagenet(net.encoder.model, backbone)
    return net


class CoarseSN(nn.Module):
    def __init__(self, backbone: str = "efficientnet_lite0", pretrained: str | None = "package"):
        super().__init__()
        self.unet = _unet(backbone, pretrained)
        self.compute_dtype = torch.float32

    def cast_for_inference(self, dtype: torch.dtype) -> "CoarseSN":
        """Compute in `dtype` (core.models.precision: bf16 on a CPU with bf16 hardware); inputs are cast on the way in,
        the lesion logits come out as float32. For inference only."""
        self.compute_dtype = dtype
        return self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute_dtype)
        return self.unet.segmentation_head(self.unet.decoder(self.unet.encoder(x))).float()


class ELayer(nn.Module):
    """Fuse encoder features with a 1-channel localisation map: concat -> 1x1 conv -> BN -> ReLU, added to the
    features through a learned scale that starts at 0 (so an enhanced-SN warm-started from coarse-SN starts as
    exactly coarse-SN instead of with a random perturbation at every encoder stage)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(channels + 1, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.scale = nn.Parameter(torch.zeros(1))

    def forward(self, features: torch.Tensor, localisation: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(localisation, size=features.shape[-2:], mode="bilinear", align_corners=False)
        return features + self.scale * self.fuse(torch.cat([features, resized], dim=1))


class EnhancedSN(CoarseSN):
    def __init__(self, backbone: str = "efficientnet_lite0", pretrained: str | None = "package"):
        super().__init__(backbone, pretrained)
        self.e_layers = nn.ModuleList(ELayer(c) for c in self.unet.encoder.out_channels[1:])

    def forward(self, x: torch.Tensor, localisation: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x, localisation = x.to(self.compute_dtype), localisation.to(self.compute_dtype)
        features = self.unet.encoder(x)
        fused = [features[0]] + [layer(f, localisation) for layer, f in zip(self.e_layers, features[1:])]
        return self.unet.segmentation_head(self.unet.decoder(fused)).float()
