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
def cpu_flags() -> frozenset[str]:
    """The flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_summary() -> str:
    """The flags that decide CPU matmul speed, e.g. 'avx2' or 'avx2 avx512f avx512_bf16 amx_bf16'."""
    shown = [flag for flag in SHOWN_FLAGS if flag in cpu_flags()]
    return " ".join(shown) or "no avx2"


def best_cpu_dtype() -> tuple[str, str]:
    """("bfloat16" | "float32", a short reason naming the CPU flags)."""
    native = [flag for flag in BF16_MATMUL_FLAGS if flag in cpu_flags()]
    if native:
        return "bfloat16", f"this CPU multiplies bf16 natively ({', '.join(native)})"
    return "float32", f"this CPU has no bf16 matmul ({cpu_summary()}): bf16 would be emulated, about 2x slower"
