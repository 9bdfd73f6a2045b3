"""GPTQ checkpoint layout: exact pack/unpack, and agreement with readers written independently.

The reference readers below follow AutoGPTQ's `QuantLinear` torch path (qlinear_cuda_old.py):
codes unpacked with `torch.bitwise_right_shift` by [0, bits, 2*bits, ...], qzeros unpacked the
same way along the output dim and incremented by 1 (the v1 convention), groups taken as
consecutive runs of `group_size` input rows. For 3 bits the reference packer is AutoGPTQ's loop
(10 codes, one straddling code, 10 codes, one straddling code, 10 codes per 3 words), written
with plain Python integers.
"""

from __future__ import annotations

import pytest
import torch

from suntool.errors import SuntoolError
from suntool.quant import packing
from suntool.quant.rtn import rtn_quantize


def _random_case(
    bits: int, in_features: int = 64, out_features: int = 64, group_size: int = 32, seed: int = 0
):
    gen = torch.Generator().manual_seed(seed)
    maxq = (1 << bits) - 1
    n_groups = in_features // group_size
    intweight = torch.randint(0, maxq + 1, (out_features, in_features), generator=gen, dtype=torch.int32)
    zeros = torch.randint(0, maxq + 1, (n_groups, out_features), generator=gen, dtype=torch.int32)
    scales = (torch.rand(n_groups, out_features, generator=gen) * 0.1 + 0.01).half()
    g_idx = (torch.arange(in_features) // group_size).to(torch.int32)
    return intweight, zeros, scales, g_idx


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_round_trip_is_exact(bits):
    intweight, zeros, scales, g_idx = _random_case(bits)
    packed = packing.pack(intweight, zeros, scales, g_idx, bits)
    assert packed.qweight.dtype == torch.int32 and packed.qweight.shape == (64 * bits // 32, 64)
    assert packed.qzeros.dtype == torch.int32 and packed.qzeros.shape == (2, 64 * bits // 32)
    assert packed.scales.dtype == torch.float16 and packed.g_idx.dtype == torch.int32
    codes, zeros_back = packing.unpack(packed.qweight, packed.qzeros, bits)
    assert torch.equal(codes, intweight)
    assert torch.equal(zeros_back, zeros)  # zero-point 0 included: exact with word-wise offsets
    weight = packing.dequantize(packed.qweight, packed.qzeros, packed.scales, g_idx, bits)
    expected = (intweight.float() - zeros.float()[g_idx.long()].t()) * scales.float()[g_idx.long()].t()
    assert torch.equal(weight, expected)


def test_codes_are_packed_lowest_bits_first_along_the_input_dim():
    codes = torch.arange(16, dtype=torch.int32).reshape(16, 1) % 16  # 16 input rows, 1 output
    words = packing.pack_rows(codes, 4)
    assert words.shape == (2, 1)
    assert int(words[0, 0]) == 0x76543210
    assert int(words[1, 0]) & 0xFFFFFFFF == 0xFEDCBA98


def test_qzeros_store_zero_minus_one():
    zeros = torch.full((1, 8), 8, dtype=torch.int32)  # symmetric 4-bit zero-point
    qzeros = packing.encode_qzeros(zeros, 4)
    assert int(qzeros[0, 0]) == 0x77777777


def _autogptq_pack_3bit(values: list[int]) -> list[int]:
    """AutoGPTQ's 3-bit packing loop for one column of codes (len a multiple of 32)."""
    words, i = [], 0
    while i < len(values):
        w0 = w1 = w2 = 0
        for j in range(10):
            w0 |= values[i + j] << (3 * j)
        i += 10
        w0 |= (values[i] << 30) & 0xFFFFFFFF
        w1 |= (values[i] >> 2) & 1
        i += 1
        for j in range(10):
            w1 |= values[i + j] << (3 * j + 1)
        i += 10
        w1 |= (values[i] << 31) & 0xFFFFFFFF
        w2 |= (values[i] >> 1) & 0x3
        i += 1
        for j in range(10):
            w2 |= values[i + j] << (3 * j + 2)
        i += 10
        words += [w0, w1, w2]
    return [w - (1 << 32) if w >= 1 << 31 else w for w in words]


def test_3bit_packing_matches_autogptq_loop():
    gen = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 8, (64, 5), generator=gen, dtype=torch.int32)
    words = packing.pack_rows(codes, 3)
    for col in range(5):
        assert words[:, col].tolist() == _autogptq_pack_3bit(codes[:, col].tolist())
    assert torch.equal(packing.unpack_rows(words, 3), codes)


def _autogptq_dequantize(qweight, qzeros, scales, bits: int, group_size: int) -> torch.Tensor:
    """AutoGPTQ's CPU dequantization for 2/4/8 bits, returning the weight [in, out]."""
    per_word = 32 // bits
    wf = torch.tensor(list(range(0, 32, bits)), dtype=torch.int32).unsqueeze(0)
    small = torch.int16 if bits == 8 else torch.int8
    zeros = torch.bitwise_right_shift(torch.unsqueeze(qzeros, 2).expand(-1, -1, per_word), wf.unsqueeze(0))
    zeros = torch.bitwise_and(zeros.to(small), (2**bits) - 1)
    zeros = (zeros + 1).reshape(-1, 1, zeros.shape[1] * zeros.shape[2])
    weight = torch.bitwise_right_shift(torch.unsqueeze(qweight, 1).expand(-1, per_word, -1), wf.unsqueeze(-1))
    weight = torch.bitwise_and(weight.to(small), (2**bits) - 1)
    weight = weight.reshape(-1, group_size, weight.shape[2])
    weight = scales.float().reshape(-1, 1, scales.shape[-1]) * (weight - zeros)
    return weight.reshape(weight.shape[0] * weight.shape[1], weight.shape[2])


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_dequantize_agrees_with_autogptq_reader(bits):
    gen = torch.Generator().manual_seed(bits)
    weight = torch.randn(48, 64, generator=gen) * 0.05
    weight[3] = weight[3].abs() + 0.01  # an all-positive row: would want zero-point 0
    q = rtn_quantize(weight, bits=bits, group_size=32)
    assert int(q.zeros.min()) >= 1  # never emitted: readers disagree about v1 zero-point 0
    packed = packing.pack(q.intweight, q.zeros, q.scales, q.g_idx, bits)
    ours = packing.dequantize(packed.qweight, packed.qzeros, packed.scales, packed.g_idx, bits)
    theirs = _autogptq_dequantize(packed.qweight, packed.qzeros, packed.scales, bits, 32)
    assert torch.equal(ours, theirs.t())


def test_bad_bits_are_refused_with_a_clear_message():
    intweight, zeros, scales, g_idx = _random_case(4)
    with pytest.raises(SuntoolError, match="bits=5 is not supported"):
        packing.pack(intweight, zeros, scales, g_idx, 5)
    with pytest.raises(SuntoolError, match="bits=16"):
        packing.check_bits(16)


def test_pack_refuses_out_of_range_codes_and_unpackable_shapes():
    intweight, zeros, scales, g_idx = _random_case(4)
    with pytest.raises(SuntoolError, match=r"intweight values must lie in \[0, 15\]"):
        packing.pack(intweight + 1, zeros, scales, g_idx, 4)
    with pytest.raises(SuntoolError, match="multiple of 32"):
        packing.pack_rows(torch.zeros(48, 4, dtype=torch.int32), 3)
    with pytest.raises(SuntoolError, match=r"zeros \(2, 64\) and scales \(1, 64\)"):
        packing.pack(intweight, zeros, scales[:1], g_idx, 4)
