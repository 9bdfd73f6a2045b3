"""CPU flags and the default dtype `suntool serve` picks from them."""

from __future__ import annotations

from suntool.hardware import best_cpu_dtype, cpu_flags, cpu_summary

AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16\n"


def test_flags_are_read_from_x86_and_arm_cpuinfo():
    assert {"avx2", "fma"} <= cpu_flags(AVX2)
    assert "asimd" in cpu_flags(ARM)
    assert cpu_flags("") == frozenset()


def test_bf16_only_where_the_cpu_multiplies_it():
    assert best_cpu_dtype(cpu_flags(SAPPHIRE))[0] == "bfloat16"
    dtype, why = best_cpu_dtype(cpu_flags(AVX2))
    assert dtype == "float32" and "avx2" in why
    assert best_cpu_dtype(frozenset())[0] == "float32"
    assert cpu_summary(cpu_flags(SAPPHIRE)) == "avx2 avx512f avx512_bf16 amx_bf16 amx_tile"
