"""Affine-Scaled Attention forward (arXiv 2602.23057): Triton kernel, torch reference, dispatcher.

``out = α · softmax(Q Kᵀ · scale + causal_mask) · V + (α_ma − α) · mean(V over visible keys)``

which is the paper's ``α·softmax(QKᵀ/√d)·V + β·ΣV`` with ``β = (α_ma − α)/N``, ``N`` the number of
keys query ``i`` can see.

Contract:
- ``affine_attention(q, k, v, alpha, alpha_ma, *, scale=None, causal=True)`` -> ``[B, H, Tq, D]`` in
  ``q.dtype``.
  - ``q``: ``[B, H, Tq, D]``; ``k``, ``v``: ``[B, Hkv, Tk, D]`` with ``H`` a multiple of ``Hkv`` (GQA: query
    head ``h`` reads KV head ``h // (H // Hkv)``).
  - ``alpha``: ``[B, H, Tq]`` (per head, per query; the model computes ``φ(W_a x)``); ``alpha_ma``: a float,
    a 0-d tensor or an ``[H]`` tensor (the moving average, a buffer: it gets a gradient only if it
    requires one).
  - ``scale`` defaults to ``D ** -0.5``.
  - ``causal=True``: query ``i`` sits at key position ``p_i = Tk − Tq + i`` (queries aligned to the end
    of the keys, ``Tk >= Tq``, as with a KV cache), sees keys ``j <= p_i`` and the mean is over those
    ``p_i + 1`` keys. ``causal=False``: every query sees all ``Tk`` keys.
- ``affine_attention_ref``: pure torch in fp32, differentiable in every tensor input.
- Triton path: a flash-attention style forward (online softmax in fp32, plus a running sum of the
  visible V rows for the mean) — the ``Tq x Tk`` matrix is never stored. Backward: when autograd
  records the call, the dispatcher wraps the kernel in an ``autograd.Function`` whose backward
  *recomputes the forward with the reference* and differentiates that (exact gradients, but the
  backward costs the reference's ``O(Tq·Tk)`` memory per head). Without autograd, the plain kernel.
"""

from __future__ import annotations

import functools

from suntool.kernels.dispatch import (
    KernelInputError,
    backend,
    interpreting,
    kernel_builder,
    needs_grad,
    next_power_of_2,
)


def _alpha_ma_tensor(alpha_ma, n_heads: int, like):
    """``alpha_ma`` as an fp32 tensor of shape [1] or [H] on ``like``'s device (keeps autograd history)."""
    import torch

    if not isinstance(alpha_ma, torch.Tensor):
        return torch.tensor([float(alpha_ma)], dtype=torch.float32, device=like.device)
    if alpha_ma.dim() == 0:
        alpha_ma = alpha_ma.reshape(1)
    if alpha_ma.dim() != 1 or alpha_ma.shape[0] not in (1, n_heads):
        raise KernelInputError(
            f"affine_attention: alpha_ma must be a float, a 0-d tensor or [H={n_heads}], "
            f"got {tuple(alpha_ma.shape)}"
        )
    return alpha_ma.to(device=like.device, dtype=torch.float32)


def _check(q, k, v, alpha, causal: bool) -> None:
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise KernelInputError(
            f"affine_attention: q must be [B,H,Tq,D] and k, v [B,Hkv,Tk,D], got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    if k.shape[0] != b or k.shape[3] != d or hkv == 0 or h % hkv:
        raise KernelInputError(
            f"affine_attention: k/v {tuple(k.shape)} do not fit q {tuple(q.shape)} "
            "(same B and D, H % Hkv == 0)"
        )
    if alpha.shape != (b, h, tq):
        raise KernelInputError(
            f"affine_attention: alpha must be [B,H,Tq]={[b, h, tq]}, got {list(alpha.shape)}"
        )
    if tk == 0 and tq > 0:
        raise KernelInputError(
            "affine_attention: no keys (Tk = 0); every query needs at least one visible key"
        )
    if causal and tk < tq:
        raise KernelInputError(
            f"affine_attention: causal attention aligns queries to the end of the keys, needs Tk >= Tq, got "
            f"Tk={tk} < Tq={tq}"
        )


def affine_attention_ref(q, k, v, alpha, alpha_ma, *, scale=None, causal: bool = True):
    """Pure-torch Affine-Scaled Attention in fp32 (differentiable); see the module docstring."""
    import torch

    _check(q, k, v, alpha, causal)
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    scale = d**-0.5 if scale is None else scale
    kf = k.float().repeat_interleave(h // hkv, dim=1)
    vf = v.float().repeat_interleave(h // hkv, dim=1)
    scores = (q.float() @ kf.transpose(-1, -2)) * scale
    if causal:
        q_pos = torch.arange(tq, device=q.device) + (tk - tq)
        visible = torch.arange(tk, device=q.device)[None, :] <= q_pos[:, None]
        scores = scores.masked_fill(~visible, float("-inf"))
        mean_v = vf.cumsum(dim=-2)[:, :, q_pos, :] / (q_pos + 1).to(torch.float32)[:, None]
    else:
        mean_v = vf.mean(dim=-2, keepdim=True)
    attn = torch.softmax(scores, dim=-1) @ vf
    a = alpha.float()[..., None]
    a_ma = _alpha_ma_tensor(alpha_ma, h, q).view(1, -1, 1, 1)
    return (a * attn + (a_ma - a) * mean_v).to(q.dtype)


@kernel_builder
def _kernels(interpret: bool):
    # tl.reduce(x, axis, tl.standard._sum_combine / _elementwise_max) is tl.sum / tl.max written with
    # builtins only, so the interpreter runs it whatever TRITON_INTERPRET was when triton was imported
    # (see suntool.kernels.dispatch).
    import triton
    import triton.language as tl

    @triton.jit
    def affine_attention_fwd(
        Q, K, V, A, AMA, Out,
        scale,
        sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sa_b, sa_h, sama_h, so_b, so_h, so_t,
        n_heads, group, n_q, n_k, head_dim,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // n_heads).to(tl.int64)
        h = (bh % n_heads).to(tl.int64)
        kvh = h // group
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_mask = rm < n_q
        q_pos = rm + (n_k - n_q)
        d = tl.arange(0, BLOCK_D)
        d_mask = d < head_dim

        q = tl.load(Q + b * sq_b + h * sq_h + rm[:, None] * sq_t + d[None, :],
                    mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
        k_base = K + b * sk_b + kvh * sk_h
        v_base = V + b * sv_b + kvh * sv_h

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.full([BLOCK_M], 0.0, tl.float32)
        acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
        v_sum = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
        hi = n_k
        if CAUSAL:
            hi = tl.minimum(n_k, (pid_m + 1) * BLOCK_M + n_k - n_q)
        for n0 in range(0, hi, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            n_mask = rn < n_k
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(k_base + rn[:, None] * sk_t + d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_base + rn[:, None] * sv_t + d[None, :], mask=kv_mask, other=0.0)
            if DOT_FP32:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
            visible = n_mask[None, :] & m_mask[:, None]
            if CAUSAL:
                visible = visible & (rn[None, :] <= q_pos[:, None])
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.reduce(s, 1, tl.standard._elementwise_max))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # padded query rows see no key
            p = tl.exp(s - m_safe[:, None])
            correction = tl.exp(m_i - m_safe)
            l_i = l_i * correction + tl.reduce(p, 1, tl.standard._sum_combine)
            acc = acc * correction[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            v_sum += tl.dot(visible.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

        n_visible = tl.full([BLOCK_M], 0.0, tl.float32) + n_k
        if CAUSAL:
            n_visible = (q_pos + 1).to(tl.float32)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        alpha = tl.load(A + b * sa_b + h * sa_h + rm, mask=m_mask, other=0.0).to(tl.float32)
        alpha_ma = tl.load(AMA + h * sama_h).to(tl.float32)
        attn = acc / l_safe[:, None]
        mean_v = v_sum / n_visible[:, None]
        out = alpha[:, None] * attn + (alpha_ma - alpha)[:, None] * mean_v
        tl.store(Out + b * so_b + h * so_h + rm[:, None] * so_t + d[None, :], out.to(Out.dtype.element_ty),
                 mask=m_mask[:, None] & d_mask[None, :])

    return affine_attention_fwd


def _launch(q, k, v, alpha, alpha_ma, scale, causal: bool):
    import torch

    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    out = torch.empty((b, h, tq, d), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    alpha = alpha.contiguous()
    a_ma = _alpha_ma_tensor(alpha_ma, h, q).detach().contiguous()
    block_d = max(16, next_power_of_2(d))
    # fp32 operands ("ieee", no TF32) for fp32 inputs and in the interpreter (no bf16 dot on CPU);
    # 16-bit operands with fp32 accumulation otherwise ("tf32" only names the default, unused for them).
    dot_fp32 = q.dtype == torch.float32 or interpreting()
    block = 16 if interpreting() else (64 if block_d <= 64 else 32)
    grid = (-(-tq // block), b * h)
    _kernels()[grid](
        q, k, v, alpha, a_ma, out,
        float(d**-0.5 if scale is None else scale),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), alpha.stride(0), alpha.stride(1),
        a_ma.stride(0) if a_ma.shape[0] > 1 else 0, out.stride(0), out.stride(1), out.stride(2),
        h, h // hkv, tq, tk, d,
        BLOCK_M=block, BLOCK_N=block, BLOCK_D=block_d,
        CAUSAL=causal, DOT_FP32=dot_fp32, DOT_PRECISION="ieee" if dot_fp32 else "tf32",
        enable_fp_fusion=True,  # explicit: Triton 3.10 changes the default
    )
    return out


@functools.cache
def _autograd_function():
    """The autograd wrapper, built on first use (so importing this file does not import torch)."""
    import torch

    class AffineAttentionFunction(torch.autograd.Function):
        """Forward: the Triton kernel. Backward: recompute with `affine_attention_ref`, differentiate it."""

        @staticmethod
        def forward(ctx, q, k, v, alpha, alpha_ma, scale, causal):
            ctx.save_for_backward(q, k, v, alpha, alpha_ma)
            ctx.scale, ctx.causal = scale, causal
            return _launch(q, k, v, alpha, alpha_ma, scale, causal)

        @staticmethod
        def backward(ctx, grad_out):
            saved = ctx.saved_tensors
            wants = ctx.needs_input_grad[:5]
            with torch.enable_grad():
                inputs = [t.detach().requires_grad_(w) for t, w in zip(saved, wants, strict=True)]
                out = affine_attention_ref(*inputs[:4], inputs[4], scale=ctx.scale, causal=ctx.causal)
                targets = [t for t, w in zip(inputs, wants, strict=True) if w]
                grads = iter(torch.autograd.grad(out, targets, grad_out))
            return (*(next(grads) if w else None for w in wants), None, None)

    return AffineAttentionFunction


def affine_attention_triton(q, k, v, alpha, alpha_ma, *, scale=None, causal: bool = True):
    """The Triton forward (with the recompute-by-reference backward), whatever the dispatcher would pick."""
    _check(q, k, v, alpha, causal)
    a_ma = _alpha_ma_tensor(alpha_ma, q.shape[1], q)
    return _autograd_function().apply(q, k, v, alpha, a_ma, scale, causal)


def affine_attention(q, k, v, alpha, alpha_ma, *, scale=None, causal: bool = True):
    """Affine-Scaled Attention; Triton where available (see module docstring), else the reference."""
    _check(q, k, v, alpha, causal)
    if backend(q, k, v, alpha) != "triton":
        return affine_attention_ref(q, k, v, alpha, alpha_ma, scale=scale, causal=causal)
    a_ma = _alpha_ma_tensor(alpha_ma, q.shape[1], q)
    if needs_grad(q, k, v, alpha, a_ma):
        return _autograd_function().apply(q, k, v, alpha, a_ma, scale, causal)
    return _launch(q, k, v, alpha, a_ma, scale, causal)
