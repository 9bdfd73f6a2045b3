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
    the current one included), HF's ``q_idx - kv_idx < W``. ``W`` is an int (every sequence) or a ``[B]``
    integer tensor (one window per sequence, each ``>= 1``): with ``seq_len`` equal for every row, a window
    of ``n`` per row selects each row's last ``n`` tokens, which is how a left-padded dense cache is read
    without copying it (`suntool.kernel_path`).
  - ``validate=True`` checks shapes and that every ``seq_len`` is in ``[1, max_blocks * block_size]``
    (one device sync), and per-sequence windows ``>= 1``; an empty batch or a zero-length sequence raises
    `KernelInputError` (a ``SuntoolError``). A decode loop that has validated once per step may pass
    ``validate=False``. Block ids are trusted (an id past ``num_blocks`` is a caller bug).
  - Only the K/V of positions ``< seq_len`` are read. Positions inside a sequence but outside its
    window must hold finite values (they are cached tokens); the Triton kernel never loads them.
- ``paged_attention_ref`` is batched torch, no Python loop over sequences: it gathers every sequence's
  blocks into one padded ``[B, max(seq_lens), Hkv, D]`` tensor (a reshape, not a copy, when the block
  tables are the identity ``arange(B * n).view(B, n)`` over the cache's first blocks: a dense cache
  viewed as paged), then runs masked softmax attention in fp32 for all sequences at once, the ``G``
  query heads of each KV head as ``G`` query rows (no ``repeat_kv`` copy) and a boolean mask of each
  row's positions ``[seq_len - window, seq_len)``: ``F.scaled_dot_product_attention`` without
  ``softcap``, matmul / tanh / ``-inf`` fill / softmax / matmul with it. Exact up to fp32 rounding.
  Keys and values past a sequence's end are zeroed first, so garbage there (even NaN) never leaks in.
  A real gather runs over chunks of rows of about 4 MiB of K/V each (one huge allocation per call
  page-faults on CPU), and what depends only on (block tables, seq_lens, window) is derived once per
  decode step: memoised on those tensors' identity and version (in-place updates are seen).
- The Triton kernel runs one program per (sequence, query head) and walks the sequence's tokens in
  tiles of ``BLOCK_N`` (any block size, a power of two or not, smaller or larger than the tile: the
  physical block of each token is looked up per token), from the window's first token on, with an
  online softmax in fp32; it never materialises the gathered keys. It is forward-only (inference):
  when autograd records the call, the dispatcher runs the reference instead.
"""

from __future__ import annotations

import threading
import weakref

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


def _identity_tables(block_tables, num_blocks: int) -> bool:
    """True when sequence ``b`` owns blocks ``b*n .. b*n+n-1`` in order (a dense cache viewed as paged)."""
    import torch

    b, n = block_tables.shape
    if b * n > num_blocks:
        return False
    expected = torch.arange(b * n, device=block_tables.device, dtype=block_tables.dtype).view(b, n)
    return torch.equal(block_tables, expected)


def _gather(cache, block_tables, width: int, identity: bool):
    """Each sequence's first ``width`` tokens: ``[B, width, Hkv, D]`` (a view when ``identity``)."""
    b, n = block_tables.shape
    _, block_size, hkv, d = cache.shape
    if identity:
        rows = cache if cache.shape[0] == b * n else cache[: b * n]
        rows = rows if n == 1 else rows.reshape(b, n * block_size, hkv, d)
    else:
        rows = cache[block_tables.long()].reshape(b, n * block_size, hkv, d)
    return rows if rows.shape[1] == width else rows[:, :width]


class _Layout:
    """What the reference derives from (block tables, seq_lens, window) alone: the same for every layer."""

    __slots__ = ("width", "tables", "identity", "past_end", "mask")

    def __init__(self, block_tables, seq_lens, sliding_window, num_blocks: int, block_size: int, device):
        import torch

        lens = seq_lens.to(device)
        shortest, self.width = (int(v) for v in lens.aminmax())
        self.tables = block_tables[:, : -(-self.width // block_size)]
        self.identity = _identity_tables(self.tables, num_blocks)
        pos = torch.arange(self.width, device=device)
        valid = None  # [B, W]: the keys each query attends; None: all W of them
        self.past_end = None  # [B, 1, W, 1]: positions >= seq_len, when some row is shorter than W
        if shortest < self.width:
            valid = pos[None, :] < lens[:, None]
            self.past_end = ~valid[:, None, :, None]
        if sliding_window is not None:
            if torch.is_tensor(sliding_window):
                sliding_window = sliding_window.to(device)
            in_window = pos[None, :] >= (lens - sliding_window)[:, None]
            valid = in_window if valid is None else valid & in_window
        self.mask = None if valid is None else valid[:, None, None, :]  # [B, 1, 1, W]


_layouts = threading.local()


def _layout(block_tables, seq_lens, sliding_window, num_blocks: int, block_size: int, device) -> _Layout:
    """`_Layout` memoised per thread on the identity *and version* of its tensors.

    The layers of one decode step pass the same block-table / seq_lens / window tensors, so the layout
    is derived once per step; an in-place update of any of them bumps its version and misses the memo.
    Inference-mode tensors have no version counter: their layout is always recomputed.
    """
    import torch

    tensors = [t for t in (block_tables, seq_lens, sliding_window) if torch.is_tensor(t)]
    if any(t.is_inference() for t in tensors):
        return _Layout(block_tables, seq_lens, sliding_window, num_blocks, block_size, device)
    key = (tuple((id(t), t._version) for t in tensors), sliding_window if not tensors[2:] else None,
           num_blocks, block_size, device)
    memo = getattr(_layouts, "memo", None)
    if memo is None:
        memo = _layouts.memo = {}
    hit = memo.get(key)
    if hit is not None and all(ref() is t for ref, t in zip(hit[0], tensors, strict=True)):
        return hit[1]
    layout = _Layout(block_tables, seq_lens, sliding_window, num_blocks, block_size, device)
    if len(memo) >= 16:
        memo.clear()
    memo[key] = (tuple(weakref.ref(t) for t in tensors), layout)
    return layout


# K+V bytes gathered per chunk of rows: large fresh allocations page-fault on every call; 4 MiB was the
# sweet spot measured on CPU (2-16 MiB within 10%, one allocation for a whole B=32 x L=512 batch 2.5x slower).
_GATHER_BYTES = 4 << 20


def _reference(q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window, softcap):
    """`paged_attention_ref` on inputs already checked: all rows at once, or chunks of rows when gathering."""
    import torch

    b, d = q.shape[0], q.shape[2]
    num_blocks, block_size, hkv = k_cache.shape[0], k_cache.shape[1], k_cache.shape[2]
    layout = _layout(block_tables, seq_lens, sliding_window, num_blocks, block_size, q.device)
    scale = d**-0.5 if scale is None else scale
    row_bytes = 2 * layout.width * hkv * d * max(k_cache.element_size(), 4)
    step = b if layout.identity else max(1, _GATHER_BYTES // row_bytes)
    if step >= b:
        return _attend(q, k_cache, v_cache, layout, slice(None), scale, softcap)
    chunks = [_attend(q, k_cache, v_cache, layout, slice(i, i + step), scale, softcap) for i in range(0, b, step)]
    return torch.cat(chunks)


def _attend(q, k_cache, v_cache, layout: _Layout, rows: slice, scale: float, softcap):
    """Masked softmax attention in fp32 for `rows` of the batch."""
    import torch

    q = q[rows]
    b, hq, d = q.shape
    hkv = k_cache.shape[2]
    tables = layout.tables[rows]
    k = _gather(k_cache, tables, layout.width, layout.identity).permute(0, 2, 1, 3).float()  # [b, Hkv, W, D]
    v = _gather(v_cache, tables, layout.width, layout.identity).permute(0, 2, 1, 3).float()
    if layout.past_end is not None:  # ragged: the tail of the shorter rows is not theirs; never let it leak
        past_end = layout.past_end[rows]
        fresh = not layout.identity or k_cache.dtype != torch.float32  # k, v are copies: zero them in place
        k = k.masked_fill_(past_end, 0.0) if fresh else k.masked_fill(past_end, 0.0)
        v = v.masked_fill_(past_end, 0.0) if fresh else v.masked_fill(past_end, 0.0)
    mask = None if layout.mask is None else layout.mask[rows]
    qg = q.reshape(b, hkv, hq // hkv, d).float()  # the G query heads of a KV head attend as G query rows
    if softcap is None:
        out = torch.nn.functional.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
    else:
        scores = torch.matmul(qg, k.transpose(-1, -2)) * scale  # [b, Hkv, G, W]
        scores = torch.tanh(scores / softcap) * softcap
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [b, Hkv, G, D]
    return out.reshape(b, hq, d).to(q.dtype)


def paged_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, scale=None, *, sliding_window=None,
                        softcap=None, validate: bool = True):
    """Batched torch reference: padded gather of every sequence's K/V, masked softmax attention in fp32."""
    _check(q, k_cache, v_cache, block_tables, seq_lens, validate)
    _check_options(sliding_window, softcap, q.shape[0], validate)
    return _reference(q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window, softcap)


@kernel_builder
def _kernels(interpret: bool):
    # tl.reduce(x, axis, tl.standard._sum_combine / _elementwise_max) is tl.sum / tl.max written with
    # builtins only, so the interpreter runs it whatever TRITON_INTERPRET was when triton was imported
    # (see suntool.kernels.dispatch).
    import triton
    import triton.language as tl

    @triton.jit
    def paged_decode_fwd(
        Q, K, V, BT, SL, WIN, Out,
        scale, softcap, window,
        sq_b, sq_h, sk_blk, sk_tok, sk_h, sv_blk, sv_tok, sv_h, sbt_b, so_b, so_h,
        head_dim, block_size, group,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_WINDOW: tl.constexpr,
        PER_SEQ_WINDOW: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        kvh = (h // group).to(tl.int64)
        d = tl.arange(0, BLOCK_D)
        d_mask = d < head_dim
        n = tl.arange(0, BLOCK_N)

        q = tl.load(Q + b * sq_b + h * sq_h + d, mask=d_mask, other=0.0).to(tl.float32)
        seq_len = tl.load(SL + b)
        start = 0
        if HAS_WINDOW:
            window_b = window
            if PER_SEQ_WINDOW:
                window_b = tl.load(WIN + b)
            start = tl.maximum(seq_len - window_b, 0)

        m_i = -float("inf")
        l_i = 0.0
        acc = tl.full([BLOCK_D], 0.0, tl.float32)
        # Tiles of BLOCK_N tokens from the window's first token; each token finds its physical block.
        for t0 in range(start, seq_len, BLOCK_N):
            tok = t0 + n
            valid = tok < seq_len
            phys = tl.load(BT + b * sbt_b + tok // block_size, mask=valid, other=0).to(tl.int64)
            slot = (tok % block_size).to(tl.int64)
            kv_mask = valid[:, None] & d_mask[None, :]
            k_ptrs = K + phys[:, None] * sk_blk + slot[:, None] * sk_tok + kvh * sk_h + d[None, :]
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
            scores = tl.reduce(k.to(tl.float32) * q[None, :], 1, tl.standard._sum_combine) * scale
            if HAS_SOFTCAP:
                # softcap * tanh(x / softcap), tanh written with exp (no libdevice in the interpreter).
                scores = softcap * (1.0 - 2.0 / (tl.exp(2.0 * scores / softcap) + 1.0))
            scores = tl.where(valid, scores, -float("inf"))
            m_new = tl.maximum(m_i, tl.reduce(scores, 0, tl.standard._elementwise_max))
            p = tl.exp(scores - m_new)
            correction = tl.exp(m_i - m_new)
            v_ptrs = V + phys[:, None] * sv_blk + slot[:, None] * sv_tok + kvh * sv_h + d[None, :]
            v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
            acc = acc * correction + tl.reduce(p[:, None] * v.to(tl.float32), 0, tl.standard._sum_combine)
            l_i = l_i * correction + tl.reduce(p, 0, tl.standard._sum_combine)
            m_i = m_new
        out = acc / l_i
        tl.store(Out + b * so_b + h * so_h + d, out.to(Out.dtype.element_ty), mask=d_mask)

    return paged_decode_fwd


def _tile(head_dim: int) -> int:
    """Tokens per loop iteration: a [BLOCK_N, BLOCK_D] fp32 tile of K (and of V) stays small."""
    return 32 if next_power_of_2(head_dim) <= 128 else 16


def _launch(q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window, softcap):
    import torch

    b, hq, d = q.shape
    block_size, hkv = k_cache.shape[1], k_cache.shape[2]
    q = q if q.stride(-1) == 1 else q.contiguous()
    k_cache = k_cache if k_cache.stride(-1) == 1 else k_cache.contiguous()
    v_cache = v_cache if v_cache.stride(-1) == 1 else v_cache.contiguous()
    block_tables = block_tables.to(torch.int32).contiguous()
    seq_lens = seq_lens.to(torch.int32).contiguous()
    per_seq = torch.is_tensor(sliding_window)
    windows = sliding_window.to(device=q.device, dtype=torch.int32).contiguous() if per_seq else seq_lens
    out = torch.empty((b, hq, d), dtype=q.dtype, device=q.device)
    _kernels()[(b, hq)](
        q, k_cache, v_cache, block_tables, seq_lens, windows, out,
        float(d**-0.5 if scale is None else scale),
        float(softcap or 1.0), 0 if per_seq else int(sliding_window or 0),
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        d, block_size, hq // hkv,
        BLOCK_D=next_power_of_2(d), BLOCK_N=_tile(d),
        HAS_SOFTCAP=softcap is not None, HAS_WINDOW=sliding_window is not None, PER_SEQ_WINDOW=per_seq,
        enable_fp_fusion=True,  # explicit: Triton 3.10 changes the default
    )
    return out


def _check_options(sliding_window, softcap, batch: int, validate: bool) -> None:
    import torch

    if torch.is_tensor(sliding_window):
        if sliding_window.shape != (batch,) or sliding_window.is_floating_point():
            raise KernelInputError(
                f"paged_attention: a per-sequence sliding_window must be an integer tensor [B={batch}], got "
                f"{sliding_window.dtype} {tuple(sliding_window.shape)}"
            )
        if validate and int(sliding_window.min()) < 1:
            raise KernelInputError(
                f"paged_attention: every sliding_window must be >= 1, got {int(sliding_window.min())}"
            )
    elif sliding_window is not None and sliding_window < 1:
        raise KernelInputError(f"paged_attention: sliding_window must be >= 1 or None, got {sliding_window}")
    if softcap is not None and softcap <= 0:
        raise KernelInputError(f"paged_attention: softcap must be > 0 or None, got {softcap}")


def paged_attention_triton(q, k_cache, v_cache, block_tables, seq_lens, scale=None, *, sliding_window=None,
                           softcap=None, validate: bool = True):
    """The Triton kernel, whatever the dispatcher would pick."""
    _check(q, k_cache, v_cache, block_tables, seq_lens, validate)
    _check_options(sliding_window, softcap, q.shape[0], validate)
    return _launch(q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window, softcap)


def paged_attention(q, k_cache, v_cache, block_tables, seq_lens, scale=None, *, sliding_window=None,
                    softcap=None, validate: bool = True):
    """Paged decode attention; Triton where available (see module docstring), else the reference."""
    _check(q, k_cache, v_cache, block_tables, seq_lens, validate)
    _check_options(sliding_window, softcap, q.shape[0], validate)
    use_triton = backend(q, k_cache, v_cache, block_tables, seq_lens) == "triton"
    if use_triton and not needs_grad(q, k_cache, v_cache):
        return _launch(q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window, softcap)
    return _reference(q, k_cache, v_cache, block_tables, seq_lens, scale, sliding_window, softcap)
