"""Which float type the networks compute in: bfloat16 where the CPU multiplies it in hardware (AMX), else float32.

On a CPU with AMX (Intel Sapphire Rapids and later: /proc/cpuinfo flag amx_bf16) a bf16 convolution runs several
times faster than fp32, so the U-Net segmenters and mask-CN's test-time-augmentation batch are 1.5x faster in bf16
(`python -m bench.precision`, which also checks on validation images that the outputs agree). Without AMX bf16 is
emulated and slower: `auto` then stays on float32.

    resolve("auto") -> torch.bfloat16 on an AMX CPU, torch.float32 elsewhere;  resolve("fp32") / resolve("bf16")
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

CHOICES = ("auto", "fp32", "bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles (Linux /proc/cpuinfo; torch's capability string names AMX on some builds)."""
    if "AMX" in torch.backends.cpu.get_cpu_capability().upper():
        return True
    try:
        return " amx_bf16" in Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False


def resolve(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype a precision name stands for on `device` (`auto`: bf16 on a CPU with AMX, fp32 otherwise)."""
    if name not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, not {name!r}")
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cpu" and cpu_has_amx() else torch.float32
    return _DTYPES[name]


def name_of(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]
