"""Rotary embedding: the reference vs transformers, the Triton kernel (interpreter) vs the reference."""

from __future__ import annotations

import pytest
import torch

from suntool.kernels.dispatch import KernelInputError
from suntool.kernels.rotary import apply_rotary, apply_rotary_ref, apply_rotary_triton
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


def _inputs(b, hq, hkv, t, d, rot, dtype, cos_batch=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, t, d, generator=gen).to(dtype)
    k = torch.randn(b, hkv, t, d, generator=gen).to(dtype)
    angles = torch.rand(cos_batch or b, t, rot // 2, generator=gen) * 6.28
    emb = torch.cat([angles, angles], dim=-1)
    return q, k, emb.cos().to(dtype), emb.sin().to(dtype)


def _hf_rotary_cos_sin(head_dim, partial, positions, dtype):
    """cos/sin as HF's own rotary modules compute them (Llama for full, Phi-3 for partial rotary)."""
    if partial == 1.0:
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        config = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim)
        rotary = LlamaRotaryEmbedding(config)
    else:
        from transformers import Phi3Config
        from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

        config = Phi3Config(hidden_size=head_dim * 2, num_attention_heads=2, partial_rotary_factor=partial)
        rotary = Phi3RotaryEmbedding(config)
    x = torch.zeros(1, dtype=dtype)
    return rotary(x, positions)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_reference_equals_llama_apply_rotary_pos_emb(dtype):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    positions = torch.tensor([[0, 1, 2, 7, 30], [3, 4, 5, 6, 100]])
    cos, sin = _hf_rotary_cos_sin(32, 1.0, positions, dtype)
    assert cos.shape == (2, 5, 32)
    q, k, _, _ = _inputs(2, 4, 2, 5, 32, 32, dtype)
    ours, theirs = apply_rotary_ref(q, k, cos, sin), apply_rotary_pos_emb(q, k, cos, sin)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert not torch.equal(ours[0], q)  # it did rotate


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
def test_reference_equals_phi3_partial_rotary(dtype, unsqueeze_dim):
    from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb

    positions = torch.arange(6)[None, :]
    cos, sin = _hf_rotary_cos_sin(40, 0.5, positions, dtype)
    assert cos.shape == (1, 6, 20)  # partial: rot_dim = 20 < head_dim = 40
    q, k, _, _ = _inputs(1, 3, 1, 6, 40, 20, dtype)
    if unsqueeze_dim == 2:
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    ours = apply_rotary_ref(q, k, cos, sin, unsqueeze_dim)
    theirs = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert torch.equal(ours[0][..., 20:], q[..., 20:])  # pass-through dims untouched


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize(
    ("b", "hq", "hkv", "t", "d", "rot"),
    [
        (2, 4, 2, 5, 64, 64),  # GQA, full rotary
        (1, 3, 1, 1, 6, 6),  # MQA, T=1, tiny non-power-of-two head dim
        (2, 2, 2, 3, 80, 48),  # partial rotary, non-power-of-two head dim and pass-through (32)
        (1, 20, 4, 2, 20, 12),  # more heads than one head block (16), odd pass-through (8)
    ],
)
def test_triton_matches_reference(dtype, b, hq, hkv, t, d, rot):
    q, k, cos, sin = _inputs(b, hq, hkv, t, d, rot, dtype)
    got_q, got_k = apply_rotary_triton(q, k, cos, sin)
    ref_q, ref_k = apply_rotary_ref(q, k, cos, sin)
    assert_close(got_q, ref_q)
    assert_close(got_k, ref_k)
    if dtype != torch.bfloat16:  # same roundings as torch; only the interpreter's bf16 cast truncates
        assert torch.equal(got_q, ref_q) and torch.equal(got_k, ref_k)


def test_triton_layouts_broadcast_and_promotion():
    q, k, cos, sin = _inputs(3, 4, 2, 5, 24, 16, torch.float32, cos_batch=1)
    # [B, T, H, D] views (non-contiguous over heads), cos broadcast over the batch.
    q_bthd, k_bthd = q.transpose(1, 2), k.transpose(1, 2)
    got = apply_rotary_triton(q_bthd, k_bthd, cos, sin, unsqueeze_dim=2)
    ref = apply_rotary_ref(q_bthd, k_bthd, cos, sin, unsqueeze_dim=2)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    # fp16 q with fp32 cos/sin promotes to fp32, as torch does.
    got = apply_rotary_triton(q.half(), k.half(), cos, sin)
    ref = apply_rotary_ref(q.half(), k.half(), cos, sin)
    assert got[0].dtype == torch.float32
    assert_close(got[0], ref[0])


def test_dispatcher_runs_kernel_and_reference_under_autograd(monkeypatch):
    import suntool.kernels.rotary as mod

    calls = []
    real = mod._rotate_one
    monkeypatch.setattr(mod, "_rotate_one", lambda *a: calls.append(1) or real(*a))
    q, k, cos, sin = _inputs(1, 2, 1, 3, 16, 16, torch.float32)
    out = apply_rotary(q, k, cos, sin)
    assert len(calls) == 2 and torch.equal(out[0], apply_rotary_ref(q, k, cos, sin)[0])
    out = apply_rotary(q.requires_grad_(True), k, cos, sin)
    assert len(calls) == 2 and out[0].grad_fn is not None


@pytest.mark.parametrize(
    ("q_shape", "cos_shape", "match"),
    [
        ((1, 2, 3, 16), (1, 3, 15), "rot_dim"),  # odd rot_dim
        ((1, 2, 3, 16), (1, 3, 18), "rot_dim"),  # rot_dim > head_dim
        ((1, 2, 3, 16), (1, 4, 16), "cos"),  # wrong T
        ((2, 3, 16), (1, 3, 16), "4-D"),
    ],
)
def test_bad_shapes_rejected(q_shape, cos_shape, match):
    q = torch.randn(q_shape)
    cos = torch.randn(cos_shape)
    with pytest.raises(KernelInputError, match=match):
        apply_rotary(q, q, cos, cos)


def test_compiles_for_cuda_without_fma(monkeypatch, tmp_path):
    import suntool.kernels.rotary as mod

    q, k, cos, sin = _inputs(1, 32, 8, 3, 96, 64, torch.bfloat16)  # Phi-3-like: 96-dim heads, partial
    kernels = compile_launches_for_gpu(monkeypatch, tmp_path, mod, apply_rotary_triton, q, k, cos, sin)
    assert len(kernels) == 2  # q and k
    ptx = kernels[0].asm["ptx"]
    assert "cvt.rn.bf16" in ptx and "fma.rn.f32" not in ptx  # torch's roundings: no fused multiply-add
