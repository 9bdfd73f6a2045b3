"""w4a16: GPTQ packing against hand-packed words, dequantization, Triton kernel (interpreter) vs reference."""

from __future__ import annotations

import pytest
import torch

from suntool.kernels.dispatch import KernelInputError
from suntool.kernels.w4a16 import (
    default_g_idx,
    dequantize_ref,
    pack_int4,
    pack_zeros,
    unpack_qweight_ref,
    unpack_zeros_ref,
    w4a16_matmul,
    w4a16_matmul_ref,
    w4a16_matmul_triton,
)
from tests.kernel_conftest_helpers import (
    DTYPES,
    assert_close,
    compile_launches_for_gpu,
    dtype_id,
    random_gptq_weight,
    use_interpreter,
)

pytestmark = pytest.mark.triton


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    use_interpreter(monkeypatch)


def test_pack_int4_matches_hand_packed_words():
    w = torch.zeros(16, 2, dtype=torch.int32)
    w[:8, 0] = torch.tensor([1, 2, 3, 4, 5, 6, 7, 15])  # low nibble first
    w[8:, 1] = 9
    qweight = pack_int4(w)
    assert qweight.dtype == torch.int32 and qweight.shape == (2, 2)
    assert qweight[0, 0].item() == 0xF7654321 - 2**32  # top nibble set: a negative int32
    assert qweight[1, 1].item() == 0x99999999 - 2**32
    assert qweight[0, 1].item() == 0 and qweight[1, 0].item() == 0
    assert torch.equal(unpack_qweight_ref(qweight), w)


def test_pack_zeros_uses_gptq_v1_convention():
    zeros = torch.tensor([[8] * 8, [1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 1, 1, 1, 1, 1, 1]])
    qzeros = pack_zeros(zeros)
    assert qzeros.shape == (3, 1)
    assert qzeros[0, 0].item() == 0x77777777  # symmetric quantization: zero 8 stored as 7 in every nibble
    assert qzeros[1, 0].item() == 0x76543210  # each nibble holds zero - 1
    assert qzeros[2, 0].item() == -1  # 0x11111110 - 0x11111111: zero 0 borrows (gptqmodel's v2->v1)
    assert torch.equal(unpack_zeros_ref(qzeros), zeros.int())


def test_dequantize_known_value():
    w = torch.zeros(8, 8, dtype=torch.int32)
    w[3, 5] = 15
    zeros = torch.full((1, 8), 8)
    scales = torch.full((1, 8), 0.5, dtype=torch.float16)
    deq = dequantize_ref(pack_int4(w), pack_zeros(zeros), scales, default_g_idx(8, 8))
    assert deq[3, 5].item() == 3.5  # (15 - 8) * 0.5
    assert deq[0, 0].item() == -4.0  # (0 - 8) * 0.5
    assert deq.dtype == torch.float32


def test_round_trips_and_dequantize_with_act_order():
    w_int, zeros, (qweight, qzeros, scales, g_idx) = random_gptq_weight(64, 24, 16, act_order=True)
    assert torch.equal(unpack_qweight_ref(qweight), w_int.int())
    assert torch.equal(unpack_zeros_ref(qzeros), zeros.int())
    expected = (w_int - zeros[g_idx.long()]).float() * scales.float()[g_idx.long()]
    assert torch.equal(dequantize_ref(qweight, qzeros, scales, g_idx), expected)
    x = torch.randn(3, 64)
    torch.testing.assert_close(w4a16_matmul_ref(x, qweight, qzeros, scales, g_idx), x @ expected)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.full((8, 8), 16), "0..15"),
        (torch.full((8, 8), -1), "0..15"),
        (torch.zeros(12, 8, dtype=torch.int64), "multiple"),
    ],
)
def test_pack_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        pack_int4(bad)
    if match != "multiple":
        with pytest.raises(ValueError, match=match):
            pack_zeros(bad)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize(
    ("m", "n_in", "n_out", "group_size", "act_order", "bias"),
    [
        (1, 64, 32, 32, False, False),  # decode: one row
        (5, 96, 40, 32, True, True),  # K not a multiple of BLOCK_K, N not of BLOCK_N, act-order, bias
        (17, 128, 72, 128, False, False),  # M = 16 + 1, one group
    ],
)
def test_triton_matches_reference(dtype, m, n_in, n_out, group_size, act_order, bias):
    _, _, packed = random_gptq_weight(n_in, n_out, group_size, act_order, seed=m)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(m, n_in, generator=gen).to(dtype)
    b = torch.randn(n_out, generator=gen).half() if bias else None
    got = w4a16_matmul_triton(x, *packed, bias=b)
    ref = w4a16_matmul_ref(x, *packed, bias=b)
    atol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), ref.float(), atol=atol, rtol=2e-2)


def test_triton_leading_dims_and_dispatch(monkeypatch):
    import suntool.kernels.w4a16 as mod

    _, _, packed = random_gptq_weight(32, 16, 8)
    x = torch.randn(2, 3, 32)
    calls = []
    real = mod._launch
    monkeypatch.setattr(mod, "_launch", lambda *a: calls.append(1) or real(*a))
    out = w4a16_matmul(x, *packed)
    assert out.shape == (2, 3, 16) and calls == [1]
    assert_close(out, w4a16_matmul_ref(x, *packed))
    out = w4a16_matmul(x.requires_grad_(True), *packed)  # autograd on x: the reference
    assert calls == [1] and out.grad_fn is not None


def test_shape_mismatches_rejected():
    _, _, (qweight, qzeros, scales, g_idx) = random_gptq_weight(32, 16, 8)
    with pytest.raises(KernelInputError, match="input features"):
        w4a16_matmul(torch.randn(2, 24), qweight, qzeros, scales, g_idx)
    with pytest.raises(KernelInputError, match="g_idx"):
        w4a16_matmul(torch.randn(2, 32), qweight, qzeros, scales, g_idx[:16])
    with pytest.raises(KernelInputError, match="scales"):
        w4a16_matmul(torch.randn(2, 32), qweight, qzeros, scales[:, :8], g_idx)


@pytest.mark.parametrize(
    ("m", "dtype", "arch"), [(1, torch.float16, 90), (40, torch.bfloat16, 80), (3, torch.float32, 90)]
)
def test_compiles_for_cuda(monkeypatch, tmp_path, m, dtype, arch):
    import suntool.kernels.w4a16 as mod

    _, _, packed = random_gptq_weight(256, 128, 128)
    x = torch.randn(m, 256).to(dtype)
    (kernel,) = compile_launches_for_gpu(
        monkeypatch, tmp_path, mod, w4a16_matmul_triton, x, *packed, arch=arch
    )
    assert "cubin" in kernel.asm
    assert ("mma" in kernel.asm["ptx"]) == (dtype != torch.float32)  # tensor cores for 16-bit activations


def test_agrees_with_suntool_quant_packing():
    """Two implementations of one on-disk format: the kernels' and the quantizer's (suntool.quant.packing)."""
    packing = pytest.importorskip("suntool.quant.packing")
    w_int, zeros, (qweight, qzeros, scales, g_idx) = random_gptq_weight(64, 24, 16, act_order=True)
    assert torch.equal(packing.pack_rows(w_int, 4), qweight)
    assert torch.equal(packing.encode_qzeros(zeros, 4), qzeros)
    theirs = packing.dequantize(qweight, qzeros, scales, g_idx, 4, torch.float32)  # [out, in]
    assert torch.equal(theirs.T, dequantize_ref(qweight, qzeros, scales, g_idx))
