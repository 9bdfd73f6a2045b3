"""Paged decode attention: reference vs dense SDPA, Triton kernel (interpreter) vs reference, input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from suntool.errors import SuntoolError
from suntool.kernels.paged_attention import paged_attention, paged_attention_ref, paged_attention_triton
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


def paged_inputs(seq_lens, hq, hkv, d, block_size, dtype, seed=0, spare_blocks=3):
    """Random K/V scattered over shuffled physical blocks; also returns each sequence's dense K/V."""
    gen = torch.Generator().manual_seed(seed)
    b = len(seq_lens)
    per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(per_seq) + spare_blocks
    k_cache = torch.randn(num_blocks, block_size, hkv, d, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, hkv, d, generator=gen).to(dtype)
    order = torch.randperm(num_blocks, generator=gen)
    block_tables = torch.full((b, max(per_seq) + 1), num_blocks - 1, dtype=torch.int32)  # junk past the end
    dense, used = [], 0
    for i, (n, nb) in enumerate(zip(seq_lens, per_seq, strict=True)):
        block_tables[i, :nb] = order[used : used + nb].to(torch.int32)
        used += nb
        ids = block_tables[i, :nb].long()
        dense.append((k_cache[ids].reshape(-1, hkv, d)[:n], v_cache[ids].reshape(-1, hkv, d)[:n]))
    q = torch.randn(b, hq, d, generator=gen).to(dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    return (q, k_cache, v_cache, block_tables, lens), dense


@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("window", [None, 4])
def test_reference_equals_sdpa_on_dense_copy(hq, hkv, window):
    seq_lens = [1, 7, 16, 17, 30]
    (q, kc, vc, bt, lens), dense = paged_inputs(seq_lens, hq, hkv, 24, 8, torch.float32)
    out = paged_attention_ref(q, kc, vc, bt, lens, sliding_window=window)
    for i, (k, v) in enumerate(dense):
        if window is not None:
            k, v = k[-window:], v[-window:]
        k = k.transpose(0, 1)[None]  # [1, Hkv, n, D]
        v = v.transpose(0, 1)[None]
        expected = F.scaled_dot_product_attention(q[i][None, :, None, :], k, v, enable_gqa=True)
        torch.testing.assert_close(out[i], expected[0, :, 0, :], atol=1e-5, rtol=1e-5)


def test_reference_softcap_and_scale_follow_gemma2_formula():
    (q, kc, vc, bt, lens), dense = paged_inputs([5, 12], 2, 1, 16, 4, torch.float32)
    out = paged_attention_ref(q, kc, vc, bt, lens, scale=0.3, softcap=2.5)
    for i, (k, v) in enumerate(dense):
        scores = torch.einsum("hd,nd->hn", q[i], k[:, 0]) * 0.3
        probs = torch.softmax(torch.tanh(scores / 2.5) * 2.5, dim=-1)
        torch.testing.assert_close(out[i], probs @ v[:, 0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, paged_attention_ref(q, kc, vc, bt, lens, scale=0.3), atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize(
    ("block_size", "seq_lens", "hq", "hkv", "d"),
    [
        (16, [1, 15, 16, 17], 4, 2, 32),  # lengths 1 and block_size-1/+0/+1, GQA
        (5, [9, 1, 11], 3, 1, 24),  # non-power-of-two block size and head dim, MQA
    ],
)
@pytest.mark.parametrize(
    "options", [{}, {"sliding_window": 6, "softcap": 5.0}], ids=["plain", "window+softcap"]
)
def test_triton_matches_reference(dtype, block_size, seq_lens, hq, hkv, d, options):
    args, _ = paged_inputs(seq_lens, hq, hkv, d, block_size, dtype)
    got = paged_attention_triton(*args, **options)
    assert_close(got, paged_attention_ref(*args, **options))


def test_triton_window_longer_than_sequence_and_strided_query():
    args, _ = paged_inputs([3, 20], 4, 2, 16, 8, torch.float32)
    q = torch.randn(2, 16, 4).transpose(1, 2)  # [B, Hq, D] with a non-unit head stride
    args = (q, *args[1:])
    assert_close(paged_attention_triton(*args, sliding_window=100), paged_attention_ref(*args))
    assert_close(
        paged_attention_triton(*args, sliding_window=1), paged_attention_ref(*args, sliding_window=1)
    )


def test_dispatcher_uses_kernel_in_interpreter(monkeypatch):
    import suntool.kernels.paged_attention as mod

    calls = []
    real = mod._launch
    monkeypatch.setattr(mod, "_launch", lambda *a: calls.append(1) or real(*a))
    args, _ = paged_inputs([4, 9], 2, 2, 16, 4, torch.float32)
    assert_close(paged_attention(*args), paged_attention_ref(*args))
    assert calls == [1]
    monkeypatch.setenv("SUNTOOL_KERNELS", "ref")
    assert_close(paged_attention(*args), paged_attention_ref(*args))
    assert calls == [1]


@pytest.mark.parametrize("impl", [paged_attention, paged_attention_ref, paged_attention_triton])
def test_empty_batch_and_zero_length_rejected(impl):
    args, _ = paged_inputs([4, 9], 2, 2, 16, 4, torch.float32)
    q, kc, vc, bt, lens = args
    with pytest.raises(SuntoolError, match="empty batch"):
        impl(q[:0], kc, vc, bt[:0], lens[:0])
    with pytest.raises(SuntoolError, match="seq_len 0"):
        impl(q, kc, vc, bt, torch.tensor([4, 0], dtype=torch.int32))
    with pytest.raises(SuntoolError, match="capacity"):
        impl(q, kc, vc, bt, torch.tensor([4, 99], dtype=torch.int32))
    with pytest.raises(SuntoolError, match="multiple"):
        impl(torch.randn(2, 3, 16), kc, vc, bt, lens)


@pytest.mark.parametrize("options", [{}, {"sliding_window": 4096, "softcap": 50.0}], ids=["plain", "gemma2"])
def test_compiles_for_cuda(monkeypatch, tmp_path, options):
    import suntool.kernels.paged_attention as mod

    args, _ = paged_inputs([5, 40], 32, 8, 128, 16, torch.bfloat16)
    (kernel,) = compile_launches_for_gpu(monkeypatch, tmp_path, mod, paged_attention_triton, *args, **options)
    assert "cubin" in kernel.asm


def dense_expected(q, dense, windows, scale=None):
    """SDPA per sequence over its last ``windows[i]`` keys (None: all of them)."""
    out = []
    for i, (k, v) in enumerate(dense):
        if windows[i] is not None:
            k, v = k[-windows[i] :], v[-windows[i] :]
        k, v = k.transpose(0, 1)[None].float(), v.transpose(0, 1)[None].float()
        expected = F.scaled_dot_product_attention(q[i][None, :, None, :].float(), k, v, enable_gqa=True, scale=scale)
        out.append(expected[0, :, 0, :])
    return torch.stack(out).to(q.dtype)


def test_reference_per_sequence_windows_equal_sdpa_on_dense_copy():
    seq_lens = [1, 7, 16, 17, 30]
    (q, kc, vc, bt, lens), dense = paged_inputs(seq_lens, 4, 2, 24, 8, torch.float32)
    windows = torch.tensor([1, 3, 20, 17, 5], dtype=torch.int32)  # longer than, equal to, shorter than seq_len
    out = paged_attention_ref(q, kc, vc, bt, lens, sliding_window=windows)
    torch.testing.assert_close(out, dense_expected(q, dense, windows.tolist()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("block_size", [1, 3, 40], ids=lambda n: f"block{n}")  # below and above the token tile
def test_triton_per_sequence_windows_and_any_block_size(dtype, block_size):
    args, _ = paged_inputs([1, 9, 41, 70], 6, 2, 16, block_size, dtype)
    windows = torch.tensor([1, 4, 41, 33], dtype=torch.int32)
    for options in ({}, {"sliding_window": windows}, {"sliding_window": windows, "softcap": 5.0}):
        assert_close(paged_attention_triton(*args, **options), paged_attention_ref(*args, **options))


def test_dense_cache_viewed_as_paged_equals_gathered_copy():
    """A dense [B, Hkv, L, D] cache read in place (identity tables, one block of L tokens per row)."""
    gen = torch.Generator().manual_seed(3)
    b, hq, hkv, length, d = 3, 4, 2, 11, 16
    keys, values = torch.randn(b, hkv, length, d, generator=gen), torch.randn(b, hkv, length, d, generator=gen)
    q = torch.randn(b, hq, d, generator=gen)
    tables = torch.arange(b, dtype=torch.int32)[:, None]
    lens = torch.full((b,), length, dtype=torch.int32)
    visible = torch.tensor([length, 4, 1], dtype=torch.int32)  # left padding: each row's last n tokens
    view_args = (q, keys.transpose(1, 2), values.transpose(1, 2), tables, lens)
    # the same tokens stored in reverse block order: a real gather through non-identity tables
    copy_args = (q, view_args[1].flip(0), view_args[2].flip(0), tables.flip(0), lens)
    dense = [(keys[i].transpose(0, 1), values[i].transpose(0, 1)) for i in range(b)]
    expected = dense_expected(q, dense, visible.tolist())
    for args in (view_args, copy_args):
        torch.testing.assert_close(paged_attention_ref(*args, sliding_window=visible), expected, atol=1e-5, rtol=1e-5)
        assert_close(paged_attention_triton(*args, sliding_window=visible), expected)


@pytest.mark.parametrize("impl", [paged_attention_ref, paged_attention_triton])
def test_garbage_past_each_sequence_never_leaks(impl):
    args, _ = paged_inputs([3, 17, 9], 4, 2, 16, 8, torch.float32)
    q, kc, vc, bt, lens = args
    expected = impl(*args)
    poisoned_k, poisoned_v = kc.clone(), vc.clone()
    for row, n in enumerate(lens.tolist()):
        last = int(bt[row, (n - 1) // 8])
        poisoned_k[last, (n - 1) % 8 + 1 :] = float("nan")
        poisoned_v[last, (n - 1) % 8 + 1 :] = float("nan")
    assert poisoned_k.isnan().any()
    got = impl(q, poisoned_k, poisoned_v, bt, lens)
    assert not got.isnan().any()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_bad_per_sequence_window_rejected():
    args, _ = paged_inputs([4, 9], 2, 2, 16, 4, torch.float32)
    with pytest.raises(SuntoolError, match=">= 1"):
        paged_attention(*args, sliding_window=torch.tensor([2, 0], dtype=torch.int32))
    with pytest.raises(SuntoolError, match="integer tensor"):
        paged_attention(*args, sliding_window=torch.tensor([2], dtype=torch.int32))


def test_compiles_for_cuda_with_per_sequence_windows(monkeypatch, tmp_path):
    import suntool.kernels.paged_attention as mod

    args, _ = paged_inputs([5, 40], 32, 8, 128, 1, torch.bfloat16)
    windows = torch.tensor([5, 17], dtype=torch.int32)
    (kernel,) = compile_launches_for_gpu(
        monkeypatch, tmp_path, mod, paged_attention_triton, *args, sliding_window=windows
    )
    assert "cubin" in kernel.asm


def test_reference_layout_memo_follows_in_place_updates():
    """The reference reuses what it derives from (tables, seq_lens, window) across calls, never stale."""
    args, _ = paged_inputs([5, 12, 9], 4, 2, 16, 4, torch.float32)
    q, kc, vc, bt, lens = args
    windows = torch.tensor([5, 3, 9], dtype=torch.int32)
    first = paged_attention_ref(q, kc, vc, bt, lens, sliding_window=windows)
    assert torch.equal(paged_attention_ref(q, kc, vc, bt, lens, sliding_window=windows), first)
    lens[1] -= 2  # a decode loop updating its buffers in place
    windows[0] = 1
    fresh = paged_attention_ref(q, kc, vc, bt, lens.clone(), sliding_window=windows.clone())
    assert not torch.allclose(fresh, first)
    assert torch.equal(paged_attention_ref(q, kc, vc, bt, lens, sliding_window=windows), fresh)
    with torch.inference_mode():  # inference tensors carry no version counter: recomputed every call
        tensors = [t.clone() for t in (q, kc, vc, bt, lens, windows)]
        got = paged_attention_ref(*tensors[:5], sliding_window=tensors[5])
    assert torch.equal(got, fresh)


def test_reference_row_chunks_equal_one_pass(monkeypatch):
    import suntool.kernels.paged_attention as mod

    args, _ = paged_inputs([3, 17, 9, 30, 1], 4, 2, 16, 4, torch.float32)
    options = {"sliding_window": torch.tensor([2, 9, 9, 30, 1], dtype=torch.int32), "softcap": 7.0}
    for opts in ({}, options):
        whole = paged_attention_ref(*args, **opts)
        monkeypatch.setattr(mod, "_GATHER_BYTES", 1)  # one row per chunk
        torch.testing.assert_close(paged_attention_ref(*args, **opts), whole, atol=1e-6, rtol=1e-6)
        monkeypatch.setattr(mod, "_GATHER_BYTES", 4 << 20)
