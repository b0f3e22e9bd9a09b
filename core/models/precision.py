"""Which float type the networks compute in: bfloat16 where the CPU multiplies it in hardware, else float32.

A CPU with AMX tiles (Intel Sapphire Rapids and later: /proc/cpuinfo flag amx_bf16) or AVX512-BF16 dot products
(AMD Zen 4 and later, Intel Cooper Lake: avx512_bf16) runs a bf16 convolution faster than an fp32 one. Measured with
`python -m bench.precision` (which also checks on validation images that the outputs agree): the whole analysis 1.5x
faster on AMX, 1.3x on an AMD EPYC with AVX512-BF16 (docs/performance.md). Without either, bf16 is emulated and
slower: `auto` then stays on float32.

    resolve("auto") -> torch.bfloat16 on such a CPU, torch.float32 elsewhere;  resolve("fp32") / resolve("bf16")
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

CHOICES = ("auto", "fp32", "bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of a CPU that multiplies bf16 in hardware


def cpu_flags() -> set[str]:
    """The words of Linux /proc/cpuinfo (its flags among them); empty elsewhere."""
    try:
        return set(Path("/proc/cpuinfo").read_text(errors="replace").split())
    except OSError:
        return set()


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware: AMX or AVX512-BF16 (torch's capability string names AMX on some
    builds)."""
    return "AMX" in torch.backends.cpu.get_cpu_capability().upper() or any(f in cpu_flags() for f in BF16_CPU_FLAGS)


def resolve(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype a precision name stands for on `device` (`auto`: bf16 on a CPU with bf16 hardware, fp32 otherwise)."""
    if name not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, not {name!r}")
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cpu" and cpu_has_bf16() else torch.float32
    return _DTYPES[name]


def name_of(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]
