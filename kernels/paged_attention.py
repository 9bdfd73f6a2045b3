"""Paged decode attention: one query token per sequence against a block-paged KV cache.

Contract:
- ``paged_attention(q, k_cache, v_cache, block_tables, seq_lens, scale=None, *, sliding_window=None,
  softcap=None, validate=True)`` -> ``[B, Hq, D]`` in ``q.dtype``.
  - ``q``: ``[B, Hq, D]``, the one new query token of each sequence.
  - ``k_cache``, ``v_cache``: ``[num_blocks, block_size, Hkv, D]``; token ``t`` of sequence ``b`` lives in
    block ``block_tables[b, t // block_size]`` at slot ``t % block_size``.
  - ``block_tables``: ``[B, max_blocks]`` int32; entries past a sequence's last block are ignored.
  - ``seq_lens``: ``[B]`` int32, ragged, each ``>= 1``; it *includes* the current token, whose K/V the
    caller has already written into the cache (so the query sits at position ``seq_len - 1``).
  - GQA/MQA: ``Hq`` a multiple of ``Hkv``; query head ``h`` reads KV head ``h // (Hq // Hkv)`` (HF's
    ``repeat_kv`` order).
  - ``scale`` defaults to ``D ** -0.5``. Scores are ``(q . k) * scale``; with ``softcap`` (Gemma-2) they
    become ``softcap * tanh(scores / softcap)`` before the softmax, as in HF.
  - ``sliding_window=W`` attends only the last ``W`` keys (positions ``seq_len - W .. seq_len - 1``,
    the current one included), HF's ``q_idx - kv_idx < W``.
  - ``validate=True`` checks shapes and that every ``seq_len`` is in ``[1, max_blocks * block_size]``
    (one device sync); an empty batch or a zero-length sequence raises `KernelInputError` (a
    ``SuntoolError``). A decode loop that has validated once per step may pass ``validate=False``.
    Block ids are trusted (an id past ``num_blocks`` is a caller bug).
- ``paged_attention_ref`` gathers each sequence's keys and runs plain softmax attention in fp32.
- The Triton kernel runs one program per (sequence, query head), walks the sequence's blocks with an
  online softmax in fp32 and never materialises the gathered keys. It is forward-only (inference):
  when autograd records the call, the dispatcher runs the reference instead.
"""

from __future__ import annotations

from suntool.kernels.dispatch import KernelInputError, backend, kernel_builder, needs_grad, next_power_of_2


def _check(q, k_cache, v_cache, block_tables, seq_lens, validate: bool) -> None:
    if q.dim() != 3:
        raise KernelInputError(f"paged_attention: q must be [B, Hq, D], got {tuple(q.shape)}")
    if q.shape[0] == 0:
        raise KernelInputError("paged_attention: empty batch (q has 0 sequences); call it with >= 1 sequence")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise KernelInputError(
            f"paged_attention: k_cache/v_cache must both be [num_blocks, block_size, Hkv, D], got "
            f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    b, hq, d = q.shape
    hkv = k_cache.shape[2]
    if k_cache.shape[3] != d:
        raise KernelInputError(
            f"paged_attention: head dim of q ({d}) and of the cache ({k_cache.shape[3]}) differ"
        )
    if hkv == 0 or hq % hkv:
        raise KernelInputError(f"paged_attention: Hq={hq} must be a multiple of Hkv={hkv}")
    if block_tables.dim() != 2 or block_tables.shape[0] != b or seq_lens.shape != (b,):
        raise KernelInputError(
            f"paged_attention: block_tables must be [B={b}, max_blocks] and seq_lens [B], got "
            f"{tuple(block_tables.shape)} and {tuple(seq_lens.shape)}"
        )
    if not validate:
        return
    capacity = block_tables.shape[1] * k_cache.shape[1]
    lo, hi = (int(v) for v in seq_lens.aminmax())
    if lo < 1:
        raise KernelInputError(
            f"paged_attention: a sequence has seq_len {lo}; every sequence needs >= 1 cached token "
            "(write the current token's K/V before attending)"
        )
    if hi > capacity:
        raise KernelInputError(
            f"paged_attention: seq_len {hi} exceeds the block table's capacity "
            f"({block_tables.shape[1]} blocks x {k_cache.shape[1]} tokens)"
        )


def paged_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, scale=None, *, sliding_window=None,
                        softcap=None, validate: bool = True):
    """Gather each sequence's K/V from its blocks and run plain softmax attention in fp32."""
    import torch

    _check(q, k_cache, v_cache, block_tables, seq_lens, validate)
    b, hq, d = q.shape
    block_size, hkv = k_cache.shape[1], k_cache.shape[2]
    group = hq // hkv
    scale = d**-0.5 if scale is None else scale
    out = torch.empty_like(q)
    for i in range(b):
        n = int(seq_lens[i])
        blocks = block_tables[i, : -(-n // block_size)].long()
        k = k_cache[blocks].reshape(-1, hkv, d)[:n].float()
        v = v_cache[blocks].reshape(-1, hkv, d)[:n].float()
        if sliding_window is not None:
            k, v = k[max(n - sliding_window, 0) :], v[max(n - sliding_window, 0) :]
        k = k.repeat_interleave(group, dim=1)  # [n, Hq, D]
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[i].float(), k) * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        probs = torch.softmax(scores, dim=-1)
        out[i] = torch.einsum("hn,nhd->hd", probs, v).to(q.dtype)
    return out


@kernel_builder
def _kernels(interpret: bool):
    # tl.reduce(x, axis, tl.standard._sum_combine / _elementwise_max) is tl.sum / tl.max written with
    # builtins only, so the interpreter runs it whatever TRITON_INTERPRET was when triton was imported
    # (see suntool.kernels.dispatch).
    import triton
    import triton.language as tl

    @triton.jit
    def paged_decode_fwd(
        Q, K, V, BT, SL, Out,
        scale, softcap, window,
        sq_b, sq_h, sk_blk, sk_tok, sk_h, sv_blk, sv_tok, sv_h, sbt_b, so_b, so_h,
        head_dim, block_size, group,
        BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_WINDOW: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        kvh = (h // group).to(tl.int64)
        d = tl.arange(0, BLOCK_D)
        d_mask = d < head_dim
        s = tl.arange(0, BLOCK_S)
        s_in_block = s < block_size

        q = tl.load(Q + b * sq_b + h * sq_h + d, mask=d_mask, other=0.0).to(tl.float32)
        seq_len = tl.load(SL + b)
        start = 0
        if HAS_WINDOW:
            start = tl.maximum(seq_len - window, 0)
        first_block = start // block_size
        n_blocks = (seq_len + block_size - 1) // block_size

        m_i = -float("inf")
        l_i = 0.0
        acc = tl.full([BLOCK_D], 0.0, tl.float32)
        for blk in range(first_block, n_blocks):
            phys = tl.load(BT + b * sbt_b + blk).to(tl.int64)
            tok = blk * block_size + s
            valid = s_in_block & (tok < seq_len) & (tok >= start)
            kv_mask = valid[:, None] & d_mask[None, :]
            k_ptrs = K + phys * sk_blk + s[:, None] * sk_tok + kvh * sk_h + d[None, :]
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
            scores = tl.reduce(k.to(tl.float32) * q[None, :], 1, tl.standard._sum_combine) * scale
            if HAS_SOFTCAP:
                # softcap * tanh(x / softcap), tanh written with exp (no libdevice in the interpreter).
                scores = softcap * (1.0 - 2.0 / (tl.exp(2.0 * scores / softcap) + 1.0))
            scores = tl.where(valid, scores, -float("inf"))
            m_new = tl.maximum(m_i, tl.reduce(scores, 0, tl.standard._elementwise_max))
            p = tl.exp(scores - m_new)
            correction = tl.exp(m_i - m_new)
            v_ptrs = V + phys * sv_blk + s[:, None] * sv_tok + kvh * sv_h + d[None, :]
            v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
            acc = acc * correction + tl.reduce(p[:, None] * v.to(tl.float32), 0, tl.standard._sum_combine)
            l_i = l_i * correction + tl.reduce(p, 0, tl.standard._sum_combine)
            m_i = m_new
        out = acc / l_i
        tl.store(Out + b * so_b + h * so_h + d, out.to(Out.dtype.element_ty), mask=d_mask)

    return paged_decode_fwd


def _launch(q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window, softcap):
    import torch

    b, hq, d = q.shape
    block_size, hkv = k_cache.shape[1], k_cache.shape[2]
    q = q if q.stride(-1) == 1 else q.contiguous()
    k_cache = k_cache if k_cache.stride(-1) == 1 else k_cache.contiguous()
    v_cache = v_cache if v_cache.stride(-1) == 1 else v_cache.contiguous()
    block_tables = block_tables.to(torch.int32).contiguous()
    seq_lens = seq_lens.to(torch.int32).contiguous()
    out = torch.empty((b, hq, d), dtype=q.dtype, device=q.device)
    _kernels()[(b, hq)](
        q, k_cache, v_cache, block_tables, seq_lens, out,
        float(d**-0.5 if scale is None else scale),
        float(softcap or 1.0), int(sliding_window or 0),
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        d, block_size, hq // hkv,
        BLOCK_D=next_power_of_2(d), BLOCK_S=next_power_of_2(block_size),
        HAS_SOFTCAP=softcap is not None, HAS_WINDOW=sliding_window is not None,
        enable_fp_fusion=True,  # explicit: Triton 3.10 changes the default
    )
    return out


def _check_options(sliding_window, softcap) -> None:
    if sliding_window is not None and sliding_window < 1:
        raise KernelInputError(f"paged_attention: sliding_window must be >= 1 or None, got {sliding_window}")
    if softcap is not None and softcap <= 0:
        raise KernelInputError(f"paged_attention: softcap must be > 0 or None, got {softcap}")


def paged_attention_triton(q, k_cache, v_cache, block_tables, seq_lens, scale=None, *, sliding_window=None,
                           softcap=None, validate: bool = True):
    """The Triton kernel, whatever the dispatcher would pick."""
    _check(q, k_cache, v_cache, block_tables, seq_lens, validate)
    _check_options(sliding_window, softcap)
    return _launch(q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window, softcap)


def paged_attention(q, k_cache, v_cache, block_tables, seq_lens, scale=None, *, sliding_window=None,
                    softcap=None, validate: bool = True):
    """Paged decode attention; Triton where available (see module docstring), else the reference."""
    _check(q, k_cache, v_cache, block_tables, seq_lens, validate)
    _check_options(sliding_window, softcap)
    use_triton = backend(q, k_cache, v_cache, block_tables, seq_lens) == "triton"
    if use_triton and not needs_grad(q, k_cache, v_cache):
        return _launch(q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window, softcap)
    return paged_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, scale,
                               sliding_window=sliding_window, softcap=softcap, validate=False)
