"""w4a16_cpu: PyTorch's int4 CPU kernel on GPTQ weights vs the fp32 reference, and its kernel_path wiring.

No Triton needed. Tolerance (see kernels/w4a16_cpu.py): the fast path rounds x, the scale s and the
folded zero s * (8 - z) to bf16 (relative error 2**-9 each) and its fp32 result to bf16 (2**-9 of |y|).
So per output ``|y - y_ref| <= 2**-9 * (|x| @ (|W| + s * (|q - 8| + |8 - z|)) + |y_ref|)`` to first
order; `bound` doubles that (2**-8) to cover the second-order terms and fp32 summation order. A second
bf16 rounding (bf16 x with a bias, or a bf16 reference) adds another 2**-9 |y|, also inside the doubling.
"""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

import suntool.kernels.w4a16 as w4a16_module
import suntool.kernels.w4a16_cpu as cpu_module
from suntool.kernel_path import disable_kernels, enable_kernels, keep_only_cpu_int4_packs
from suntool.kernels.dispatch import KernelInputError
from suntool.kernels.w4a16 import w4a16_matmul_ref
from suntool.kernels.w4a16_cpu import CpuInt4Pack, pack_for_cpu, w4a16_matmul_cpu
from tests.kernel_conftest_helpers import random_gptq_weight

pytestmark = pytest.mark.skipif(not cpu_module.available(), reason="this torch has no int4 CPU ops")


@pytest.fixture(autouse=True)
def _one_thread_no_triton(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("SUNTOOL_KERNELS", raising=False)
    yield
    torch.set_num_threads(threads)


def bound(x, w_int, zeros, scales, g_idx, y_ref):
    """Twice the first-order bf16 error bound of the module docstring, per output."""
    g = g_idx.long()
    s = scales.float().index_select(0, g)
    z = zeros.float().index_select(0, g)
    q = w_int.float()
    magnitude = (q - z).abs() * s + s * ((q - 8).abs() + (8 - z).abs())
    return 2**-8 * (x.float().abs() @ magnitude + y_ref.float().abs())


def assert_within_bound(y, y_ref, tol):
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    excess = (y.float() - y_ref.float()).abs() - tol
    assert float(excess.max()) <= 0, f"exceeds the bf16 bound by {float(excess.max())}"


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("shape", [(1,), (5,), (2, 3)], ids=["batch1", "batch5", "3d"])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_matches_reference_within_bf16_bound(group_size, shape, bias):
    n_in, n_out = 256, 48
    w_int, zeros, tensors = random_gptq_weight(n_in, n_out, group_size, seed=group_size)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, n_in, generator=gen)
    b = torch.randn(n_out, generator=gen) if bias else None
    pack = pack_for_cpu(*tensors)
    assert isinstance(pack, CpuInt4Pack) and pack.group_size == group_size
    assert pack.weight.dtype == torch.uint8 and pack.weight.shape == (n_out, n_in // 2)
    assert pack.scales_and_zeros.shape == (n_in // group_size, n_out, 2)
    y_ref = w4a16_matmul_ref(x, *tensors, b)
    y = w4a16_matmul_cpu(x, pack, b)
    assert_within_bound(y, y_ref, bound(x, w_int, zeros, tensors[2], tensors[3], y_ref))
    assert float((y - y_ref).abs().max()) > 0  # bf16 really happened: the bound is what is tested
    y16 = w4a16_matmul_cpu(x.bfloat16(), pack, b)  # bf16 in, bf16 out
    assert y16.dtype == torch.bfloat16
    assert_within_bound(y16.float(), y_ref, bound(x, w_int, zeros, tensors[2], tensors[3], y_ref))


@pytest.mark.parametrize("group_size", [256, -1], ids=["g256_uses_op_128", "one_group"])
def test_larger_groups_repeat_their_scales(group_size):
    n_in, n_out = (384, 32) if group_size == 256 else (96, 32)  # 384 rows: a partial last GPTQ group
    w_int, zeros, tensors = random_gptq_weight(n_in, n_out, group_size)
    pack = pack_for_cpu(*tensors)
    assert pack is not None and pack.group_size == (128 if group_size == 256 else 32)
    x = torch.randn(4, n_in, generator=torch.Generator().manual_seed(2))
    y_ref = w4a16_matmul_ref(x, *tensors)
    assert_within_bound(w4a16_matmul_cpu(x, pack), y_ref, bound(x, w_int, zeros, *tensors[2:], y_ref))


def test_fast_path_does_not_apply():
    _, _, act_order = random_gptq_weight(128, 32, 32, act_order=True)
    assert pack_for_cpu(*act_order) is None
    _, _, group16 = random_gptq_weight(128, 32, 16)  # the op accepts group sizes 32..256 only
    assert pack_for_cpu(*group16) is None
    _, _, group48 = random_gptq_weight(96, 32, 48)
    assert pack_for_cpu(*group48) is None
    _, _, narrow = random_gptq_weight(128, 24, 32)  # out_features must be a multiple of 16
    assert pack_for_cpu(*narrow) is None
    qweight, qzeros, scales, g_idx = random_gptq_weight(128, 32, 32)[2]
    assert pack_for_cpu(qweight, qzeros, scales, g_idx + 4) is None  # g_idx past the last group
    assert pack_for_cpu(qweight.to("meta"), qzeros, scales, g_idx) is None  # not on the CPU
    with pytest.raises(KernelInputError):
        pack_for_cpu(qweight, qzeros, scales[:2], g_idx)


def test_rejects_bad_inputs():
    pack = pack_for_cpu(*random_gptq_weight(64, 32, 32)[2])
    with pytest.raises(KernelInputError):
        w4a16_matmul_cpu(torch.randn(2, 32), pack)
    with pytest.raises(KernelInputError):
        w4a16_matmul_cpu(torch.randn(2, 64, requires_grad=True), pack)
    assert w4a16_matmul_cpu(torch.randn(0, 64), pack).shape == (0, 32)


# --------------------------------------------------------------------------------------------
# kernel_path wiring


def rtn_llama():
    from suntool.quant.quantize_model import quantize_model
    from tests.tiny_models import build_model

    model = build_model("llama")
    quantize_model(model, [], bits=4, group_size=32, method="rtn")
    return model.eval()


@pytest.fixture
def counts(monkeypatch):
    calls: Counter = Counter()
    targets = ((cpu_module, "w4a16_matmul_cpu"), (cpu_module, "pack_for_cpu"), (w4a16_module, "w4a16_matmul"))
    for module, name in targets:
        real = getattr(module, name)

        def wrapper(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)
    return calls


def quant_linears(model):
    from suntool.quant.qlinear import QuantLinear

    return [m for m in model.modules() if isinstance(m, QuantLinear)]


def test_enabled_bf16_model_uses_the_cpu_int4_path(counts, monkeypatch):
    from suntool.quant.packing import dequantize

    plain = rtn_llama()
    model = enable_kernels(copy.deepcopy(plain))
    linears = quant_linears(model)
    n_quant = len(linears)
    ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = plain(input_ids=ids).logits  # fp32: the exact reference path, before any kernel
        assert sum(counts.values()) == 0
        assert torch.equal(model(input_ids=ids).logits, expected)  # fp32 activations stay on the reference
        assert counts["w4a16_matmul"] == n_quant and counts["w4a16_matmul_cpu"] == 0
        counts.clear()

        model.bfloat16()
        fast = model(input_ids=ids).logits
        model(input_ids=ids)
        assert counts["w4a16_matmul_cpu"] == 2 * n_quant and counts["w4a16_matmul"] == 0
        assert counts["pack_for_cpu"] == n_quant  # packed once per module, then cached

        # each layer against the fp32 reference on the same bf16 input, within the documented bound
        layer = linears[0]
        x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(3)).bfloat16()
        y_ref = w4a16_matmul_ref(x.float(), layer.qweight, layer.qzeros, layer.scales, layer.g_idx)
        w_int = w4a16_module.unpack_qweight_ref(layer.qweight)
        zeros = w4a16_module.unpack_zeros_ref(layer.qzeros)
        tol = bound(x, w_int, zeros, layer.scales, layer.g_idx, y_ref)
        assert_within_bound(layer(x).float(), y_ref, tol)
        weight = dequantize(layer.qweight, layer.qzeros, layer.scales, layer.g_idx, bits=4)
        torch.testing.assert_close(y_ref, x.float() @ weight.t(), atol=1e-5, rtol=1e-5)

        monkeypatch.setenv("SUNTOOL_KERNELS", "ref")
        counts.clear()
        ref = model(input_ids=ids).logits
        assert counts["w4a16_matmul_cpu"] == 0 and counts["w4a16_matmul"] == n_quant
        assert torch.equal(layer(x), w4a16_matmul_ref(x, layer.qweight, layer.qzeros, layer.scales, layer.g_idx))
    # whole model in bf16: the fast path changes only the linears' rounding; logits of this 2-layer model
    # (|logit| up to ~5) move by a few bf16 ulps at most
    torch.testing.assert_close(fast.float(), ref.float(), atol=0.1, rtol=0.05)
    assert (fast.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9

    assert all("_suntool_cpu_int4" in m.__dict__ for m in linears)
    disable_kernels(model)
    assert all("_suntool_cpu_int4" not in m.__dict__ and "forward" not in m.__dict__ for m in linears)


def test_cached_pack_follows_buffer_changes_and_remembers_misses(counts):
    model = enable_kernels(rtn_llama()).bfloat16()
    layer = quant_linears(model)[0]
    x = torch.randn(2, layer.in_features, generator=torch.Generator().manual_seed(4)).bfloat16()
    with torch.no_grad():
        before = layer(x)
        layer(x)
        assert counts["pack_for_cpu"] == 1
        layer.qweight.copy_(torch.roll(layer.qweight, 1, dims=1))  # in place, as load_state_dict does
        after = layer(x)
        assert counts["pack_for_cpu"] == 2 and not torch.equal(after, before)
        y_ref = w4a16_matmul_ref(x.float(), layer.qweight, layer.qzeros, layer.scales, layer.g_idx)
        torch.testing.assert_close(after.float(), y_ref, atol=0.05, rtol=0.02)

        layer.g_idx = layer.g_idx.roll(1)  # a grouping the op cannot read: the miss is cached too
        counts.clear()
        layer(x)
        layer(x)
        assert counts["pack_for_cpu"] == 1 and counts["w4a16_matmul_cpu"] == 0 and counts["w4a16_matmul"] == 2


def test_grad_keeps_the_reference(counts):
    model = enable_kernels(rtn_llama()).bfloat16()
    layer = quant_linears(model)[0]
    x = torch.randn(2, layer.in_features, requires_grad=True).bfloat16()
    layer(x).float().sum().backward()
    assert counts["w4a16_matmul_cpu"] == 0 and counts["w4a16_matmul"] == 1


def test_keep_only_packs_frees_qweight_and_computes_the_same(counts):
    from suntool.errors import SuntoolError

    model = enable_kernels(rtn_llama()).bfloat16()
    linears = quant_linears(model)
    gptq_bytes = sum(m.qweight.nbytes + m.qzeros.nbytes + m.scales.nbytes + m.g_idx.nbytes for m in linears)
    ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    counts.clear()
    assert keep_only_cpu_int4_packs(model) == gptq_bytes > 0
    assert all(t.numel() == 0 for m in linears for t in (m.qweight, m.qzeros, m.scales, m.g_idx))
    assert not any(p.requires_grad for p in model.parameters())
    assert keep_only_cpu_int4_packs(model) == 0  # idempotent
    after = model(input_ids=ids).logits  # grad mode on: frozen parameters, so no gradient is needed
    assert torch.equal(after, before)
    assert counts["w4a16_matmul_cpu"] == len(linears) and counts["w4a16_matmul"] == 0
    assert counts["pack_for_cpu"] == 0  # the packs of the first forward, kept: never re-made from the empty qweight
    layer = linears[0]
    with pytest.raises(SuntoolError, match="keeps only its CPU int4 pack.*float32"):
        layer(torch.zeros(1, layer.in_features))
    with pytest.raises(SuntoolError, match="with gradient"):
        layer(torch.zeros(1, layer.in_features, dtype=torch.bfloat16, requires_grad=True))
    with pytest.raises(SuntoolError, match="reload the model"):
        disable_kernels(model)


def test_keep_only_packs_leaves_other_models_alone(monkeypatch):
    fp32 = enable_kernels(rtn_llama())
    assert keep_only_cpu_int4_packs(fp32) == 0  # fp32 activations need the GPTQ weights
    assert keep_only_cpu_int4_packs(rtn_llama().bfloat16()) == 0  # kernels not enabled
    monkeypatch.setenv("SUNTOOL_KERNELS", "ref")
    assert keep_only_cpu_int4_packs(enable_kernels(rtn_llama()).bfloat16()) == 0
    assert all(m.qweight.numel() > 0 for m in quant_linears(fp32))
    assert all(p.requires_grad for p in fp32.parameters())  # left trainable
