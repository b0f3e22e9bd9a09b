"""A trained network made into an inference-only one: BatchNorm folded into the convolutions, and on a CPU each
convolution's weights laid out once for oneDNN, with the ReLU / ReLU6 that follows it fused in.

    model = pack_convolutions(fold_batchnorm(model.eval()), example_input)

- fold_batchnorm: y = gamma * (Wx + b - mean) / sqrt(var + eps) + beta is again a convolution, so one pass over each
  activation map per layer goes.
- pack_convolutions: torch's eager conv2d hands oneDNN a plain weight tensor on every call, which oneDNN reorders into
  its blocked layout each time, and a ReLU6 after it is one more pass over the activations. PackedConv2d keeps the
  weight in oneDNN's layout for the input shape one example forward pass recorded
  (torch.ops.mkldnn._reorder_convolution_weight) and applies the activation as a oneDNN post-op
  (torch.ops.mkldnn._convolution_pointwise): what torch.compile's CPU freezing does, without compiling. Outputs are
  identical (tests/test_cpu_inference.py); the whole analysis was 1.08x (1 thread) to 1.12x (2 threads) faster
  (docs/performance.md). No backward: gradient CAMs run on an unpacked copy.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from core.models.cpu_support import cpu_runs_bf16

# (conv, bn) attribute pairs of timm's EfficientNet stem/head and blocks; smp's Conv2dReLU and the E-layers are
# nn.Sequential(conv, bn, relu) and are found as adjacent children.
_CONV_BN_PAIRS = {"conv_pwl": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),   # InvertedResidual
                  "conv_dw": (("conv_dw", "bn1"), ("conv_pw", "bn2")),                         # DepthwiseSeparable
                  None: (("conv_stem", "bn1"), ("conv_head", "bn2"))}
# Activations oneDNN applies as a post-op of a convolution: torch.ops.mkldnn._convolution_pointwise's name and scalars
_POST_OPS = {nn.ReLU: ("relu", []), nn.ReLU6: ("hardtanh", [0.0, 6.0])}


def _conv_followers(model: nn.Module) -> Iterator[tuple[nn.Module, str, str]]:
    """(parent, conv name, name of the child that directly follows the conv) over the whole model: timm's blocks by
    their attribute names, nn.Sequential by position."""
    for module in list(model.modules()):
        children = dict(module.named_children())
        if isinstance(module, nn.Sequential):
            names = list(children)
            pairs = list(zip(names, names[1:]))
        else:
            key = ("conv_pwl" if "conv_pwl" in children else
                   "conv_dw" if "conv_dw" in children and "conv_pw" in children else None)
            pairs = _CONV_BN_PAIRS[key]
        for conv_name, next_name in pairs:
            if conv_name in children and next_name in children:
                yield module, conv_name, next_name


# ---------------------------------------------------------------- conv + BatchNorm folding
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(conv.weight.detach() * scale.view(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach(), requires_grad=False)


def _after_bn(bn: nn.Module) -> nn.Module:
    """What is left of a folded BN: timm's BatchNormAct2d keeps its activation, a plain BN becomes identity."""
    parts = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None))
             if m is not None and not isinstance(m, nn.Identity)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a convolution into that convolution's weights and bias.
    Only for a model in eval mode that will not be trained again."""
    if model.training:
        raise ValueError("fold_batchnorm is for eval-mode models only")
    for module, conv_name, bn_name in _conv_followers(model):
        conv, bn = getattr(module, conv_name), getattr(module, bn_name)
        if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                and bn.running_mean is not None and bn.affine and conv.out_channels == bn.num_features):
            _fold_into(conv, bn)
            setattr(module, bn_name, _after_bn(bn))
    return model


# ---------------------------------------------------------------- oneDNN weight layout + fused activation
class PackedConv2d(nn.Module):
    """An inference-only nn.Conv2d (zero padding) with its weight in oneDNN's layout and an optional fused ReLU /
    ReLU6. Any input shape works; the one given to the constructor gets the best layout."""

    def __init__(self, conv: nn.Conv2d, input_shape: tuple[int, ...], post_op: str = "none",
                 scalars: list | None = None):
        super().__init__()
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.post_op, self.scalars = post_op, list(scalars or [])
        weight = conv.weight.detach()
        self.register_buffer("weight", torch.ops.mkldnn._reorder_convolution_weight(
            weight, self.padding, self.stride, self.dilation, self.groups, list(input_shape)))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach())
        self.out_channels = conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, self.padding, self.stride,
                                                       self.dilation, self.groups, self.post_op, self.scalars, "")

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, groups={self.groups}, stride={self.stride}, post_op={self.post_op}"


def can_pack(device: str | torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN can hold `dtype` convolution weights on `device`: a CPU, and for bf16 one that runs oneDNN's bf16
    convolutions (core.models.cpu_support; the reorder raises on an AVX2-only CPU)."""
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return dtype != torch.bfloat16 or cpu_runs_bf16()


def _packable(conv: nn.Module) -> bool:
    return type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _post_op(follower: nn.Module) -> tuple[str, list] | None:
    """The fusable activation a follower module is (alone, or as a one-module nn.Sequential), else None."""
    if isinstance(follower, nn.Sequential) and len(follower) == 1:
        follower = follower[0]
    return _POST_OPS.get(type(follower))


@torch.inference_mode()
def pack_convolutions(model: nn.Module, *example_inputs: torch.Tensor) -> nn.Module:
    """Replace every plain convolution that `model(*example_inputs)` runs by a PackedConv2d for the input shape it saw,
    fusing the ReLU / ReLU6 that directly follows it (the activation module becomes nn.Identity). In place; returns
    the model. CPU only (can_pack), inference only, after fold_batchnorm and any dtype cast."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def record(conv: nn.Module, args: tuple) -> None:
        shapes.setdefault(conv, tuple(args[0].shape))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if _packable(m)]
    try:
        model(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    for module, conv_name, next_name in _conv_followers(model):
        conv, follower = getattr(module, conv_name), getattr(module, next_name)
        if isinstance(module, nn.Sequential) and isinstance(follower, nn.Identity):  # smp: conv, (folded BN), ReLU
            names = list(dict(module.named_children()))
            position = names.index(next_name) + 1
            next_name = names[position] if position < len(names) else next_name
            follower = getattr(module, next_name)
        post_op = _post_op(follower)
        if conv in shapes and post_op is not None:
            setattr(module, conv_name, PackedConv2d(conv, shapes.pop(conv), *post_op))
            setattr(module, next_name, nn.Identity())
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if child in shapes:
                setattr(module, name, PackedConv2d(child, shapes.pop(child)))
    return model
