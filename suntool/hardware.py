"""What the CPU can do, for choosing defaults: `cpu_flags()`, `best_cpu_dtype()`.

`best_cpu_dtype()` returns ("bfloat16", why) where the CPU multiplies bf16 natively (`avx512_bf16` or
`amx_bf16` in /proc/cpuinfo) and ("float32", why) elsewhere: on AVX2-only CPUs bf16 is emulated and
measured about 2x slower than fp32 (docs/serving.md). Machines without /proc/cpuinfo report no flags.
"""

from __future__ import annotations

import functools
from pathlib import Path

BF16_MATMUL_FLAGS = ("amx_bf16", "avx512_bf16")
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


@functools.cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The flags (x86 `flags`, Arm `Features`) of the first CPU in `cpuinfo` (default /proc/cpuinfo)."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model() -> str:
    """The `model name` of the first CPU, or 'unknown'."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


def cpu_summary(flags: frozenset[str] | None = None) -> str:
    """The flags that decide CPU matmul speed, e.g. 'avx2' or 'avx2 avx512f avx512_bf16 amx_bf16'."""
    flags = cpu_flags() if flags is None else flags
    return " ".join(flag for flag in SHOWN_FLAGS if flag in flags) or "no avx2"


def best_cpu_dtype(flags: frozenset[str] | None = None) -> tuple[str, str]:
    """("bfloat16" | "float32", a short reason naming the CPU flags)."""
    flags = cpu_flags() if flags is None else flags
    native = [flag for flag in BF16_MATMUL_FLAGS if flag in flags]
    if native:
        return "bfloat16", f"this CPU multiplies bf16 natively ({', '.join(native)})"
    return "float32", f"this CPU has no bf16 matmul ({cpu_summary(flags)}): bf16 would be emulated, about 2x slower"
