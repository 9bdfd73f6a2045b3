"""RTN grid and GPTQ on single weight matrices."""

from __future__ import annotations

import pytest
import torch

from suntool.errors import SuntoolError
from suntool.quant import packing
from suntool.quant.gptq import HessianAccumulator, gptq_quantize
from suntool.quant.rtn import rtn_quantize


def _correlated_inputs(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Activations with strongly correlated features and a few large-scale ones (like LLM inputs)."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, dim // 4, generator=gen)
    mix = torch.randn(dim // 4, dim, generator=gen)
    x = latent @ mix + 0.1 * torch.randn(n, dim, generator=gen)
    return x * torch.linspace(0.2, 3.0, dim)


def _hessian(x: torch.Tensor, batches: int = 4) -> torch.Tensor:
    acc = HessianAccumulator(x.shape[1])
    for chunk in x.chunk(batches):
        acc.add_batch(chunk.reshape(2, -1, x.shape[1]))  # [batch, seq, features], like hooks see
    return acc.hessian


def test_hessian_accumulator_is_the_running_average_of_2xxt():
    x = _correlated_inputs(96, 32)
    assert torch.allclose(_hessian(x, batches=3), 2 * x.t() @ x / 96, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "bits,group_size,sym", [(4, 32, False), (3, 64, False), (4, -1, False), (8, 16, True)]
)
def test_rtn_error_is_at_most_half_a_step(bits, group_size, sym):
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(32, 64, generator=gen) * 0.05
    weight[0] = weight[0].abs()  # all positive: the grid lifts its zero-point to 1
    weight[1] = 0.0  # all zero
    q = rtn_quantize(weight, bits=bits, group_size=group_size, sym=sym)
    size = 64 if group_size == -1 else group_size
    assert q.scales.shape == (64 // size, 32) and q.g_idx.tolist() == [i // size for i in range(64)]
    step = q.scales.float()[q.g_idx.long()].t()
    err = (weight - q.dequantize()).abs()
    assert bool((err <= 0.5 * step * (1 + 1e-5) + 1e-9).all())  # half a step (fp32 arithmetic aside)
    assert int(q.zeros.min()) >= 1 and int(q.intweight.max()) <= (1 << bits) - 1


def test_gptq_reconstructs_layer_outputs_better_than_rtn():
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(64, 128, generator=gen) * 0.05
    x = _correlated_inputs(1024, 128)
    h = _hessian(x)
    rtn = rtn_quantize(weight, bits=3, group_size=32)
    gptq = gptq_quantize(weight, h, bits=3, group_size=32)
    ref = x @ weight.t()
    rtn_err = torch.linalg.norm(ref - x @ rtn.dequantize().t())
    gptq_err = torch.linalg.norm(ref - x @ gptq.quantized.dequantize().t())
    assert gptq_err < 0.7 * rtn_err
    assert gptq.loss > 0 and gptq.damp == pytest.approx(0.01) and gptq.dead_inputs == 0
    # the codes pack into the checkpoint layout and unpack to the same weight
    q = gptq.quantized
    packed = packing.pack(q.intweight, q.zeros, q.scales, q.g_idx, 3)
    assert torch.equal(
        packing.dequantize(packed.qweight, packed.qzeros, packed.scales, packed.g_idx, 3), q.dequantize()
    )


def test_act_order_gives_a_permuted_g_idx_and_still_beats_rtn():
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(32, 64, generator=gen) * 0.05
    x = _correlated_inputs(512, 64, seed=5)
    x = x[:, torch.randperm(64, generator=gen)]  # so that diag(H) is not sorted by column
    h = _hessian(x)
    result = gptq_quantize(weight, h, bits=4, group_size=16, desc_act=True)
    g_idx = result.quantized.g_idx
    perm = torch.argsort(torch.diag(h), descending=True)
    expected = torch.empty(64, dtype=torch.int32)
    expected[perm] = (torch.arange(64) // 16).to(torch.int32)
    assert torch.equal(g_idx, expected)
    assert not bool((g_idx[1:] >= g_idx[:-1]).all())  # non-monotonic
    assert torch.bincount(g_idx.long()).tolist() == [16, 16, 16, 16]
    rtn = rtn_quantize(weight, bits=4, group_size=16)
    ref = x @ weight.t()
    assert torch.linalg.norm(ref - x @ result.quantized.dequantize().t()) < torch.linalg.norm(
        ref - x @ rtn.dequantize().t()
    )


def test_dead_inputs_are_zeroed_and_reported():
    gen = torch.Generator().manual_seed(6)
    weight = torch.randn(16, 32, generator=gen)
    x = _correlated_inputs(256, 32)
    x[:, 5] = 0.0
    result = gptq_quantize(weight, _hessian(x), bits=4, group_size=16)
    assert result.dead_inputs == 1
    assert torch.equal(result.quantized.dequantize()[:, 5], torch.zeros(16))


def test_group_size_must_divide_in_features():
    with pytest.raises(SuntoolError, match="group_size=24 does not divide in_features=64"):
        rtn_quantize(torch.randn(8, 64), bits=4, group_size=24)
    with pytest.raises(SuntoolError, match="group_size=24 does not divide"):
        gptq_quantize(torch.randn(8, 64), torch.eye(64), bits=4, group_size=24)
    with pytest.raises(SuntoolError, match="bits=6"):
        gptq_quantize(torch.randn(8, 64), torch.eye(64), bits=6, group_size=32)
