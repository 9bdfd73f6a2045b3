"""RMSNorm: the Triton kernel (interpreter) against its reference, the reference against HF's modules."""

from __future__ import annotations

import pytest
import torch

from suntool.kernels.dispatch import KernelInputError
from suntool.kernels.rmsnorm import (
    rmsnorm,
    rmsnorm_ref,
    rmsnorm_residual,
    rmsnorm_residual_ref,
    rmsnorm_residual_triton,
    rmsnorm_triton,
)
from tests.kernel_conftest_helpers import (
    DTYPES,
    assert_close,
    compile_launches_for_gpu,
    dtype_id,
    use_interpreter,
)

pytestmark = pytest.mark.triton


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    use_interpreter(monkeypatch)


def _inputs(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    w = torch.randn(shape[-1], generator=gen).to(dtype)
    r = torch.randn(shape, generator=gen).to(dtype)
    return x, w, r


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 64), (4, 130)])
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_triton_matches_reference(dtype, shape, offset):
    x, w, _ = _inputs(shape, dtype)
    assert_close(rmsnorm_triton(x, w, 1e-6, offset), rmsnorm_ref(x, w, 1e-6, offset))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(1, 1), (2, 3, 33), (5, 64)])
def test_fused_residual_matches_reference(dtype, shape):
    x, w, r = _inputs(shape, dtype, seed=1)
    y, s = rmsnorm_residual_triton(x, r, w, 1e-5)
    y_ref, s_ref = rmsnorm_residual_ref(x, r, w, 1e-5)
    assert_close(s, s_ref)
    assert_close(y, y_ref)
    if dtype != torch.bfloat16:  # the interpreter truncates fp32->bf16; fp32/fp16 sums round the same
        assert torch.equal(s, s_ref)


def test_non_contiguous_rows_and_mixed_weight_dtype():
    x = torch.randn(6, 40)[::2]  # row stride 80
    w = torch.randn(40, dtype=torch.bfloat16)
    assert_close(rmsnorm_triton(x, w, 1e-6), rmsnorm_ref(x, w, 1e-6))


def test_empty_rows():
    x = torch.randn(0, 16)
    assert rmsnorm_triton(x, torch.ones(16), 1e-6).shape == (0, 16)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_reference_equals_hf_gemma2_rmsnorm(dtype):
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm

    norm = Gemma2RMSNorm(48, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48))
    x = torch.randn(3, 4, 48).to(dtype)
    with torch.no_grad():
        assert torch.equal(rmsnorm_ref(x, norm.weight, 1e-6, offset=1.0), norm(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_reference_vs_hf_llama_rmsnorm(dtype):
    """Llama rounds to the input dtype before the weight multiply: equal in fp32, one rounding apart else."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(48, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48))
        x = torch.randn(3, 4, 48).to(dtype)
        ours, theirs = rmsnorm_ref(x, norm.weight, 1e-5), norm(x)
    if dtype == torch.float32:
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    else:
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(ours.float(), theirs.float(), atol=4 * eps, rtol=4 * eps)


def test_dispatcher_uses_kernel_and_falls_back_under_autograd(monkeypatch):
    import suntool.kernels.rmsnorm as mod

    calls = []
    real = mod._launch
    monkeypatch.setattr(mod, "_launch", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, w, r = _inputs((2, 32), torch.float32)
    assert_close(rmsnorm(x, w, 1e-6), rmsnorm_ref(x, w, 1e-6))
    y, s = rmsnorm_residual(x, r, w, 1e-6)
    assert_close(y, rmsnorm_residual_ref(x, r, w, 1e-6)[0])
    assert len(calls) == 2
    w_param = w.clone().requires_grad_(True)
    out = rmsnorm(x, w_param, 1e-6)
    assert len(calls) == 2 and out.grad_fn is not None  # the forward-only kernel is skipped


def test_bad_weight_and_residual_rejected():
    with pytest.raises(KernelInputError, match="weight"):
        rmsnorm(torch.randn(2, 8), torch.ones(7))
    with pytest.raises(KernelInputError, match="residual"):
        rmsnorm_residual(torch.randn(2, 8), torch.randn(2, 8, dtype=torch.float16), torch.ones(8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=dtype_id)
def test_compiles_for_cuda(monkeypatch, tmp_path, dtype):
    import suntool.kernels.rmsnorm as mod

    x, w, r = _inputs((2, 4096), dtype)
    (kernel,) = compile_launches_for_gpu(monkeypatch, tmp_path, mod, rmsnorm_residual_triton, x, r, w, 1e-6)
    assert "cubin" in kernel.asm
