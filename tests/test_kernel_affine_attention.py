"""Affine-Scaled Attention: reference vs the paper's β form and SDPA; Triton forward/backward vs the ref."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from suntool.kernels.affine_attention import affine_attention, affine_attention_ref, affine_attention_triton
from suntool.kernels.dispatch import KernelInputError
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


def _inputs(b, h, hkv, tq, tk, d, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=gen).to(dtype)
    k = torch.randn(b, hkv, tk, d, generator=gen).to(dtype)
    v = torch.randn(b, hkv, tk, d, generator=gen).to(dtype)
    alpha = torch.rand(b, h, tq, generator=gen)
    alpha_ma = torch.rand(h, generator=gen)
    return q, k, v, alpha, alpha_ma


def _beta_form(q, k, v, alpha, alpha_ma, causal):
    """The paper's ``α·softmax(QKᵀ/√d)·V + β·ΣV``, ``β = (α_ma − α)/N``, one query at a time."""
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    out = torch.empty(b, h, tq, d)
    for bi in range(b):
        for hi in range(h):
            kk, vv = k[bi, hi // (h // hkv)], v[bi, hi // (h // hkv)]
            for i in range(tq):
                n = tk - tq + i + 1 if causal else tk
                probs = torch.softmax(kk[:n] @ q[bi, hi, i] / d**0.5, dim=0)
                a = alpha[bi, hi, i]
                beta = (alpha_ma[hi] - a) / n
                out[bi, hi, i] = a * (probs @ vv[:n]) + beta * vv[:n].sum(dim=0)
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(2, 4, 2, 5, 9, 8), (1, 2, 1, 6, 6, 12)])
def test_reference_equals_beta_form(causal, shape):
    q, k, v, alpha, alpha_ma = _inputs(*shape)
    expected = _beta_form(q, k, v, alpha, alpha_ma, causal)
    torch.testing.assert_close(affine_attention_ref(q, k, v, alpha, alpha_ma, causal=causal), expected)


def test_reference_with_unit_alphas_is_sdpa():
    q, k, v, alpha, _ = _inputs(2, 4, 2, 3, 7, 16)
    ones = torch.ones_like(alpha)
    mask = torch.arange(7)[None, :] <= (torch.arange(3) + 4)[:, None]  # queries aligned to the end
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(affine_attention_ref(q, k, v, ones, 1.0), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize(
    ("b", "h", "hkv", "tq", "tk", "d", "causal"),
    [
        (1, 2, 1, 1, 17, 16, True),  # decode-like: one query, Tk = block + 1
        (2, 4, 2, 17, 17, 24, True),  # square causal, GQA, non-power-of-two head dim
        (1, 2, 2, 15, 33, 32, True),  # Tq = block - 1, Tk > Tq
        (1, 3, 1, 5, 20, 8, False),  # non-causal, MQA
    ],
)
def test_triton_forward_matches_reference(dtype, b, h, hkv, tq, tk, d, causal):
    q, k, v, alpha, alpha_ma = _inputs(b, h, hkv, tq, tk, d, dtype)
    got = affine_attention_triton(q, k, v, alpha, alpha_ma, causal=causal)
    assert_close(got, affine_attention_ref(q, k, v, alpha, alpha_ma, causal=causal))


@pytest.mark.parametrize("alpha_ma", [0.7, torch.tensor(0.2)], ids=["float", "0-d"])
def test_triton_scalar_alpha_ma_and_scale(alpha_ma):
    q, k, v, alpha, _ = _inputs(1, 2, 2, 4, 6, 16)
    got = affine_attention_triton(q, k, v, alpha, alpha_ma, scale=0.05)
    assert_close(got, affine_attention_ref(q, k, v, alpha, alpha_ma, scale=0.05))
    assert not torch.allclose(got, affine_attention_ref(q, k, v, alpha, alpha_ma), atol=1e-3)


def test_backward_through_triton_equals_reference_gradients():
    inputs = _inputs(1, 4, 2, 5, 8, 16, seed=3)
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    out = affine_attention(*leaves)  # interpreter on + autograd recording: the autograd.Function
    assert type(out.grad_fn).__name__ == "AffineAttentionFunctionBackward"
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad_out)
    ref_leaves = [t.clone().requires_grad_(True) for t in inputs]
    expected = torch.autograd.grad(affine_attention_ref(*ref_leaves), ref_leaves, grad_out)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
        assert g.abs().sum() > 0


def test_dispatcher_choices(monkeypatch):
    import suntool.kernels.affine_attention as mod

    calls = []
    real = mod._launch
    monkeypatch.setattr(mod, "_launch", lambda *a: calls.append(1) or real(*a))
    q, k, v, alpha, alpha_ma = _inputs(1, 2, 1, 3, 5, 8)
    with torch.no_grad():
        out = affine_attention(q, k, v, alpha, alpha_ma)
    assert calls == [1] and out.grad_fn is None
    monkeypatch.setenv("SUNTOOL_KERNELS", "ref")
    affine_attention(q, k, v, alpha, alpha_ma)
    assert calls == [1]


def test_bad_inputs_rejected():
    q, k, v, alpha, alpha_ma = _inputs(1, 2, 1, 6, 4, 8)
    with pytest.raises(KernelInputError, match="Tk >= Tq"):
        affine_attention(q, k, v, alpha, alpha_ma)
    q, k, v, alpha, alpha_ma = _inputs(1, 2, 1, 3, 4, 8)
    with pytest.raises(KernelInputError, match="alpha must be"):
        affine_attention(q, k, v, alpha[..., :2], alpha_ma)
    with pytest.raises(KernelInputError, match="alpha_ma"):
        affine_attention(q, k, v, alpha, torch.rand(3))
    with pytest.raises(KernelInputError, match="multiple|fit"):
        affine_attention(
            torch.randn(1, 3, 3, 8),
            torch.randn(1, 2, 4, 8),
            torch.randn(1, 2, 4, 8),
            torch.rand(1, 3, 3),
            0.5,
        )


@pytest.mark.parametrize(("dtype", "d", "causal"), [(torch.bfloat16, 128, True), (torch.float16, 64, False)])
def test_compiles_for_cuda(monkeypatch, tmp_path, dtype, d, causal):
    import suntool.kernels.affine_attention as mod

    q, k, v, alpha, alpha_ma = _inputs(1, 4, 2, 20, 30, d, dtype)
    (kernel,) = compile_launches_for_gpu(
        monkeypatch, tmp_path, mod, mod._launch, q, k, v, alpha, alpha_ma, None, causal
    )
    assert "cubin" in kernel.asm
