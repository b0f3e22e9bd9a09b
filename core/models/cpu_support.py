"""What this CPU can do for the networks, asked in one place: every "does this CPU support X" question in the project
(bf16 by default or at all, the oneDNN packed convolutions, training's autocast, the inference engine) goes through
cpu_isa(), so a test can make a big CPU answer like a small one.

    cpu_isa() -> "avx2" | "avx512" | "avx512_bf16" | "amx"     (ISA_LEVELS, least to most capable)

- avx2: no AVX-512 (most laptops, many servers; also what any other CPU is called). oneDNN has no bf16 convolution here: torch raises
  "bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq", so bf16 is refused.
- avx512: AVX-512 BW/VL/DQ without bf16 dot products (Intel Skylake-SP .. Ice Lake). bf16 runs, emulated and slower.
- avx512_bf16: AVX512-BF16 dot products (AMD Zen 4 and later, Intel Cooper Lake): bf16 pays.
- amx: AMX tiles (Intel Sapphire Rapids and later): bf16 pays most.

The level is the lowest of what Linux /proc/cpuinfo lists, what torch's own dispatcher picked
(torch.backends.cpu.get_cpu_capability, capped by ATEN_CPU_CAPABILITY), what oneDNN will run in bf16 (capped by
ONEDNN_MAX_CPU_ISA) and LESIONLENS_CPU_ISA. To reproduce an AVX2-only CPU on a bigger one, set both
LESIONLENS_CPU_ISA=avx2 (what the project believes) and ONEDNN_MAX_CPU_ISA=AVX2 (what oneDNN's kernels use):
`.ci/run` runs the precision tests that way too.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

ISA_LEVELS = ("avx2", "avx512", "avx512_bf16", "amx")
CAP_ENV = "LESIONLENS_CPU_ISA"
BF16_HARDWARE = ("avx512_bf16", "amx")  # levels that multiply bf16 in hardware: bf16 is the faster precision there
# /proc/cpuinfo flags each level needs (all of them); oneDNN's bf16 convolutions need AVX-512 BW, VL and DQ
_LEVEL_FLAGS = {"avx512": ("avx512bw", "avx512vl", "avx512dq"), "avx512_bf16": ("avx512_bf16",), "amx": ("amx_bf16",)}


def cpu_flags() -> set[str]:
    """The words of Linux /proc/cpuinfo (its flags among them); empty elsewhere."""
    try:
        return set(Path("/proc/cpuinfo").read_text(errors="replace").split())
    except OSError:
        return set()


def _from_flags(flags: set[str]) -> str:
    level = "avx2"
    for name in ISA_LEVELS[1:]:
        if all(flag in flags for flag in _LEVEL_FLAGS[name]):
            level = name
    return level


@lru_cache(maxsize=1)
def detected_isa() -> str:
    """The CPU's level as the hardware and the libraries see it (LESIONLENS_CPU_ISA aside); read once."""
    flags = cpu_flags()
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if flags:
        level = _from_flags(flags)
    else:  # no /proc/cpuinfo (not Linux): torch's dispatcher names AVX512 / AMX where the CPU has them
        level = "amx" if "AMX" in capability else "avx512" if "AVX512" in capability else "avx2"
    if "AVX512" not in capability and "AMX" not in capability:  # torch's own kernels capped (ATEN_CPU_CAPABILITY)
        level = "avx2"
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        level = "avx2"  # oneDNN capped (ONEDNN_MAX_CPU_ISA) or built without bf16: its kernels are the AVX2 ones
    return level


def cpu_isa() -> str:
    """This CPU's level in ISA_LEVELS: detected_isa(), capped by LESIONLENS_CPU_ISA when that is set."""
    level = detected_isa()
    cap = os.environ.get(CAP_ENV, "").strip().lower()
    if not cap:
        return level
    if cap not in ISA_LEVELS:
        raise ValueError(f"{CAP_ENV} must be one of {', '.join(ISA_LEVELS)}, not {cap!r}")
    return min(level, cap, key=ISA_LEVELS.index)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where bf16 is faster than fp32."""
    return cpu_isa() in BF16_HARDWARE


def cpu_runs_bf16() -> bool:
    """Whether oneDNN's bf16 convolutions run here at all (AVX-512 and up; emulated below AVX512-BF16)."""
    return cpu_isa() != "avx2"


def describe() -> str:
    """One line for logs and test reports: the level and where a cap came from."""
    caps = [f"{name}={os.environ[name]}" for name in (CAP_ENV, "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
            if os.environ.get(name)]
    return (f"CPU ISA {cpu_isa()} (detected {detected_isa()}{'; ' + ', '.join(caps) if caps else ''}): "
            f"bf16 {'in hardware' if cpu_has_bf16() else 'emulated' if cpu_runs_bf16() else 'not available'}")
