"""What a CPU bf16 autocast leaves in float32: the depthwise convolutions.

torch.autocast("cpu", dtype=torch.bfloat16) runs every convolution in bf16. On a CPU without AMX a depthwise
convolution's forward + backward is slower in bf16 than in fp32, while the dense and pointwise ones are faster
(AMD EPYC with AVX512-BF16, batch 32, channels_last, EfficientNet-Lite0 shapes; forward + backward: depthwise 96 ch 3x3
at 96x128 198 -> 332 ms, 240 ch 5x5 at 24x32 56 -> 96 ms; pointwise 144 -> 144 ch at 48x64 127 -> 98 ms, dense 3x3
32 ch at 96x128 162 -> 103 ms). keep_depthwise_in_fp32 makes a model's depthwise convolutions run with autocast off on
float32 inputs; everything else still follows the autocast. One coarse-SN training step (`python -m bench.training
--stages coarse_sn`): fp32 3.13 s, bf16 2.20 s, bf16 with fp32 depthwise 1.84 s.
"""
from __future__ import annotations

import torch
from torch import nn


class Fp32DepthwiseConv2d(nn.Conv2d):
    """An nn.Conv2d that computes in float32 whatever autocast is active (same parameters, same state_dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def is_depthwise(module: nn.Module) -> bool:
    return type(module) is nn.Conv2d and module.groups > 1 and module.groups == module.in_channels


def keep_depthwise_in_fp32(model: nn.Module) -> int:
    """Turn every depthwise nn.Conv2d of `model` into an Fp32DepthwiseConv2d, in place; how many there were."""
    depthwise = [m for m in model.modules() if is_depthwise(m)]
    for module in depthwise:
        module.__class__ = Fp32DepthwiseConv2d
    return len(depthwise)
