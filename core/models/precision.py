"""Which float type the networks compute in: bfloat16 where the CPU multiplies it in hardware, else float32.

A CPU with AMX tiles (Intel Sapphire Rapids and later) or AVX512-BF16 dot products (AMD Zen 4 and later, Intel
Cooper Lake) runs a bf16 convolution faster than an fp32 one. Measured with `python -m bench.precision` (which also
checks on validation images that the outputs agree): the whole analysis 1.5x faster on AMX, 1.3x on an AMD EPYC with
AVX512-BF16 (docs/performance.md). With AVX-512 but no bf16 hardware bf16 is emulated and slower: `auto` then stays
on float32. Without AVX-512 oneDNN has no bf16 convolution at all: an explicit bf16 request falls back to float32
with a logged sentence. What the CPU can do comes from core.models.cpu_support (one place, capped by tests).

    resolve("auto") -> torch.bfloat16 on such a CPU, torch.float32 elsewhere;  resolve("fp32") / resolve("bf16")
"""
from __future__ import annotations

import logging

import torch

from core.models.cpu_support import cpu_has_bf16, cpu_isa, cpu_runs_bf16

CHOICES = ("auto", "fp32", "bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
log = logging.getLogger(__name__)


def resolve(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype a precision name stands for on `device` (`auto`: bf16 on a CPU with bf16 hardware, fp32 otherwise;
    `bf16` on a CPU that cannot run it: fp32, logged)."""
    if name not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, not {name!r}")
    on_cpu = torch.device(device).type == "cpu"
    if name == "auto":
        return torch.bfloat16 if on_cpu and cpu_has_bf16() else torch.float32
    if name == "bf16" and on_cpu and not cpu_runs_bf16():
        log.warning("bf16 was asked for, but this CPU (%s) has no AVX-512, which oneDNN's bf16 convolutions need: "
                    "the networks compute in fp32 instead.", cpu_isa())
        return torch.float32
    return _DTYPES[name]


def name_of(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]
