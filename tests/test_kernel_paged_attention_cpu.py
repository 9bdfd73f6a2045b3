"""The C paged decode-attention kernel against `paged_attention_ref`: GQA groups, odd head sizes, block
sizes, ragged lengths, sliding windows (shared and per row), soft-capping, thread counts; and its refusals."""

from __future__ import annotations

import pytest
import torch

from suntool.kernels.paged_attention import paged_attention_ref
from suntool.kernels.paged_attention_cpu import cpu_kernel_available, paged_attention_cpu


def paged_case(seq_lens, hq, hkv, d, block_size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(per_seq) + 2
    k = torch.randn(num_blocks, block_size, hkv, d, generator=gen)
    v = torch.randn(num_blocks, block_size, hkv, d, generator=gen)
    order = torch.randperm(num_blocks, generator=gen)
    tables = torch.full((len(seq_lens), max(per_seq) + 1), num_blocks - 1, dtype=torch.int32)
    used = 0
    for row, count in enumerate(per_seq):
        tables[row, :count] = order[used : used + count].to(torch.int32)
        used += count
    q = torch.randn(len(seq_lens), hq, d, generator=gen)
    return q, k, v, tables, torch.tensor(seq_lens, dtype=torch.int32)


def test_the_kernel_builds_here():
    # CI and the development machines have gcc: the fast path must really be exercised, not skipped.
    assert cpu_kernel_available()


@pytest.mark.parametrize(("hq", "hkv", "d", "block_size"), [
    (9, 3, 64, 16), (4, 4, 32, 8), (8, 1, 20, 5), (6, 2, 128, 128), (2, 1, 7, 3),
])
@pytest.mark.parametrize("threads", [1, 2])
def test_matches_reference(hq, hkv, d, block_size, threads):
    q, k, v, tables, lens = paged_case([1, 5, 37, 130, 64], hq, hkv, d, block_size)
    expected = paged_attention_ref(q, k, v, tables, lens)
    got = paged_attention_cpu(q, k, v, tables, lens, num_threads=threads)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [1, 8, 1000, "per-row"])
def test_sliding_windows(window):
    q, k, v, tables, lens = paged_case([1, 9, 40, 17], 4, 2, 16, 4, seed=1)
    window = torch.tensor([1, 3, 40, 9]) if window == "per-row" else window
    expected = paged_attention_ref(q, k, v, tables, lens, sliding_window=window)
    got = paged_attention_cpu(q, k, v, tables, lens, sliding_window=window)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_softcap_and_scale():
    q, k, v, tables, lens = paged_case([3, 30], 4, 2, 16, 4, seed=2)
    q = q * 8  # large scores, so the cap matters
    expected = paged_attention_ref(q, k, v, tables, lens, 0.3, softcap=5.0)
    got = paged_attention_cpu(q, k, v, tables, lens, 0.3, softcap=5.0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, paged_attention_cpu(q, k, v, tables, lens, 0.3), atol=1e-3)


def test_reads_only_visible_positions():
    q, k, v, tables, lens = paged_case([5, 12], 2, 1, 8, 4, seed=3)
    expected = paged_attention_cpu(q, k, v, tables, lens)
    # poison every slot past each sequence's end (and the spare blocks): the result must not move
    for row, n in enumerate(lens.tolist()):
        for pos in range(n, tables.shape[1] * 4):
            block = int(tables[row, pos // 4])
            if pos // 4 >= -(-n // 4):
                continue
            k[block, pos % 4] = float("nan")
            v[block, pos % 4] = float("nan")
    assert torch.equal(paged_attention_cpu(q, k, v, tables, lens), expected)


def test_bf16_caches_read_as_fp32():
    q, k, v, tables, lens = paged_case([1, 19, 50], 6, 2, 24, 8, seed=4)
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    expected = paged_attention_ref(q.float(), k.float(), v.float(), tables, lens)
    got = paged_attention_cpu(q, k, v, tables, lens)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=1e-2, atol=1e-2)  # bf16 rounding of the output


def test_refusals():
    q, k, v, tables, lens = paged_case([3], 4, 2, 8, 4)
    with pytest.raises(TypeError):
        paged_attention_cpu(q.double(), k.double(), v.double(), tables, lens)
    with pytest.raises(ValueError):
        paged_attention_cpu(torch.randn(1, 3, 8), k, v, tables, lens)  # 3 query heads over 2 KV heads
    with pytest.raises(ValueError):
        paged_attention_cpu(q, k.transpose(1, 2), v, tables, lens)


@pytest.mark.parametrize("whole_rows", [True, False])
def test_both_task_shapes_match_the_reference(whole_rows, monkeypatch):
    """A task per sequence (all its KV heads, whole token rows) or per (sequence, KV head)."""
    from suntool.kernels import paged_attention_cpu as kernel

    monkeypatch.setattr(kernel, "_WHOLE_ROWS_BATCH", 0 if whole_rows else 10**6)
    for seed, (hq, hkv, d, block_size) in enumerate([(9, 3, 64, 16), (8, 2, 20, 5), (4, 4, 7, 3)]):
        q, k, v, tables, lens = paged_case([1, 5, 37, 130, 64, 17], hq, hkv, d, block_size, seed=10 + seed)
        window = torch.tensor([1, 3, 40, 9, 64, 2])
        for threads in (1, 2):
            torch.testing.assert_close(paged_attention_cpu(q, k, v, tables, lens, num_threads=threads),
                                       paged_attention_ref(q, k, v, tables, lens), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(paged_attention_cpu(q, k, v, tables, lens, sliding_window=window),
                                   paged_attention_ref(q, k, v, tables, lens, sliding_window=window),
                                   rtol=1e-5, atol=1e-5)
        half = paged_attention_cpu(q.bfloat16(), k.bfloat16(), v.bfloat16(), tables, lens)
        expected = paged_attention_ref(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), tables, lens)
        torch.testing.assert_close(half.float(), expected, rtol=2e-2, atol=2e-2)
