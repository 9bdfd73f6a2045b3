"""Shared helpers of the kernel tests (``tests/test_kernel_*.py``).

The kernel files build their ``@triton.jit`` functions lazily, once per value of ``TRITON_INTERPRET``
(Triton reads the flag when it decorates, not at import or launch), so a test only has to set the
variable for its own duration: `use_interpreter` does that through ``monkeypatch``, which leaves the
rest of the suite (run in the same process, in any order) on the default backend.
"""

from __future__ import annotations

import pytest
import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (atol, rtol) for Triton vs reference. The interpreter truncates fp32->bf16 casts (GPUs round to
# nearest), so bf16 allows a couple of bf16 ulps.
TOLERANCE = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (3e-2, 2e-2),
}


def use_interpreter(monkeypatch) -> None:
    """Run Triton kernels on CPU for this test: ``TRITON_INTERPRET=1``, default (auto) backend choice.

    Triton is imported (once per process) with the flag *off*: its own library functions (``tl.sum``...)
    are decorated at import, and the compile checks below need them compiled, not interpreted. The
    kernel files do not call those functions, so their interpreted kernels work with either import.
    """
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("SUNTOOL_KERNELS", raising=False)


def assert_close(actual, expected, dtype=None) -> None:
    """Compare in fp32 with the tolerance of ``dtype`` (default: ``expected.dtype``)."""
    atol, rtol = TOLERANCE[dtype or expected.dtype]
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


def dtype_id(dtype) -> str:
    return str(dtype).removeprefix("torch.")


_POINTER_TYPES = {
    torch.float32: "*fp32",
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.int32: "*i32",
    torch.int64: "*i64",
}
_COMPILE_OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")


def _triton_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return _POINTER_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def compile_launches_for_gpu(monkeypatch, cache_dir, module, launch, *args, arch: int = 90, **kwargs):
    """Compile, for CUDA ``sm_<arch>`` and without a GPU, every kernel launch ``launch(*args)`` would make.

    The launcher runs on CPU tensors with the file's kernel swapped for a recorder; each recorded call
    (its real arguments and constexprs) is then compiled by Triton's NVIDIA backend all the way to a
    cubin, which catches what the interpreter forgives (``tl.dot`` shapes, loop-carried types, ...).
    Compiled files go to ``cache_dir`` (a test's ``tmp_path``), not ``~/.triton``. Returns the kernels.
    """
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache_dir))
    if not isinstance(triton.language.standard._sum_combine, triton.runtime.jit.JITFunction):
        pytest.skip(
            "triton was first imported under TRITON_INTERPRET=1 in this process; it cannot compile here"
        )
    kernel = module._kernels()
    assert isinstance(kernel, triton.runtime.jit.JITFunction)  # built for the compiler, not the interpreter
    launches = []

    class _Recorder:
        def __getitem__(self, grid):
            return lambda *a, **kw: launches.append((a, kw))

    monkeypatch.setattr(module, "_kernels", lambda: _Recorder())
    launch(*args, **kwargs)
    assert launches, "the launcher launched nothing"
    compiled = []
    for call_args, call_kwargs in launches:
        options = {k: call_kwargs.pop(k) for k in list(call_kwargs) if k in _COMPILE_OPTIONS}
        values = dict(zip(kernel.arg_names, call_args, strict=False)) | call_kwargs
        signature = {
            p.name: "constexpr" if p.is_constexpr else _triton_type(values[p.name]) for p in kernel.params
        }
        constexprs = {p.name: values[p.name] for p in kernel.params if p.is_constexpr}
        source = ASTSource(kernel, signature, constexprs=constexprs)
        compiled.append(triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options))
    return compiled


def random_gptq_weight(n_in, n_out, group_size, act_order=False, seed=0):
    """A random GPTQ 4-bit weight: ``(w_int, zeros, (qweight, qzeros, scales, g_idx))``.

    ``w_int`` ``[n_in, n_out]`` and ``zeros`` ``[n_groups, n_out]`` are the unpacked codes (zeros 0 and
    15 included: the v1 borrow cases), ``scales`` fp16; ``group_size`` -1 is one group; ``act_order``
    permutes ``g_idx`` as desc_act checkpoints do.
    """
    from suntool.kernels.w4a16 import default_g_idx, pack_int4, pack_zeros

    gen = torch.Generator().manual_seed(seed)
    n_groups = 1 if group_size == -1 else -(-n_in // group_size)
    w_int = torch.randint(0, 16, (n_in, n_out), generator=gen)
    zeros = torch.randint(0, 16, (n_groups, n_out), generator=gen)
    zeros[0, :5] = 0  # the v1 borrow case
    zeros[-1, -3:] = 15
    scales = (torch.rand(n_groups, n_out, generator=gen) * 0.05 + 0.001).half()
    g_idx = default_g_idx(n_in, group_size)
    if act_order:
        g_idx = g_idx[torch.randperm(n_in, generator=gen)]
    return w_int, zeros, (pack_int4(w_int), pack_zeros(zeros), scales, g_idx)
