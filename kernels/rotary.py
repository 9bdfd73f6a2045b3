"""Rotary position embedding applied to q and k (HF ``rotate_half`` convention, partial rotary too).

Contract:
- ``apply_rotary(q, k, cos, sin, unsqueeze_dim=1)`` -> ``(q_embed, k_embed)``, the same as transformers'
  ``apply_rotary_pos_emb`` of Llama/Qwen2 (``rot_dim == head_dim``) and of Phi-3 (partial rotary,
  ``rot_dim < head_dim``: only the first ``rot_dim`` dims are rotated, the rest pass through unchanged).
  - ``q``: ``[B, Hq, T, D]`` and ``k``: ``[B, Hkv, T, D]`` for ``unsqueeze_dim=1`` (HF's layout after the
    transpose), or ``[B, T, H, D]`` for ``unsqueeze_dim=2``.
  - ``cos``, ``sin``: ``[B, T, rot_dim]`` (or ``[1, T, rot_dim]``, broadcast over the batch) as HF's
    ``rotary_emb`` returns them; ``rot_dim`` even and ``<= D``.
  - Result dtype: ``torch.promote_types(q.dtype, cos.dtype)``, as in HF (which passes cos/sin in q's dtype).
- ``apply_rotary_ref`` is HF's formula verbatim (``q*cos + rotate_half(q)*sin`` on the rotated slice).
- The Triton kernel rounds each product and the sum to the result dtype as those torch ops do and is
  compiled without FMA contraction, so it is meant to match the reference bit for bit (checked in the
  CPU interpreter for fp32/fp16, not yet on a GPU). The interpreter truncates fp32->bf16 casts (a GPU
  rounds to nearest), so there bf16 results may differ by one ulp.
- The kernel is forward-only; under autograd the dispatcher runs the reference.
"""

from __future__ import annotations

from suntool.kernels.dispatch import KernelInputError, backend, kernel_builder, needs_grad, next_power_of_2


def rotate_half(x):
    """HF's ``rotate_half``: ``cat(-x2, x1)`` over the last dim split in two halves."""
    import torch

    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_ref(q, k, cos, sin, unsqueeze_dim: int = 1):
    """Pure torch, identical to transformers' Llama (full) / Phi-3 (partial) ``apply_rotary_pos_emb``."""
    import torch

    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    rot_dim = cos.shape[-1]
    if rot_dim == q.shape[-1]:
        return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)
    q_rot, q_pass = q[..., :rot_dim], q[..., rot_dim:]
    k_rot, k_pass = k[..., :rot_dim], k[..., rot_dim:]
    q_embed = torch.cat([(q_rot * cos) + (rotate_half(q_rot) * sin), q_pass], dim=-1)
    k_embed = torch.cat([(k_rot * cos) + (rotate_half(k_rot) * sin), k_pass], dim=-1)
    return q_embed, k_embed


@kernel_builder
def _kernels(interpret: bool):
    import triton
    import triton.language as tl

    @triton.jit
    def rotary_fwd(
        X, Y, COS, SIN,
        sx_b, sx_t, sx_h, sy_b, sy_t, sy_h, sc_b, sc_t, ss_b, ss_t,
        n_t, n_heads, half, n_pass,
        BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, HAS_PASS: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = (pid // n_t).to(tl.int64)
        t = (pid % n_t).to(tl.int64)
        heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        r = tl.arange(0, BLOCK_R)
        r_mask = r < half
        h_mask = heads < n_heads
        mask = h_mask[:, None] & r_mask[None, :]
        out_ty = Y.dtype.element_ty

        c_base = COS + b * sc_b + t * sc_t
        s_base = SIN + b * ss_b + t * ss_t
        cos1 = tl.load(c_base + r, mask=r_mask, other=0.0).to(tl.float32)[None, :]
        cos2 = tl.load(c_base + half + r, mask=r_mask, other=0.0).to(tl.float32)[None, :]
        sin1 = tl.load(s_base + r, mask=r_mask, other=0.0).to(tl.float32)[None, :]
        sin2 = tl.load(s_base + half + r, mask=r_mask, other=0.0).to(tl.float32)[None, :]

        x_rows = X + b * sx_b + t * sx_t + heads[:, None].to(tl.int64) * sx_h
        y_rows = Y + b * sy_b + t * sy_t + heads[:, None].to(tl.int64) * sy_h
        x1 = tl.load(x_rows + r[None, :], mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_rows + half + r[None, :], mask=mask, other=0.0).to(tl.float32)
        # Same roundings as torch's `q * cos + rotate_half(q) * sin` in the result dtype.
        a1 = (x1 * cos1).to(out_ty).to(tl.float32)
        b1 = (-x2 * sin1).to(out_ty).to(tl.float32)
        a2 = (x2 * cos2).to(out_ty).to(tl.float32)
        b2 = (x1 * sin2).to(out_ty).to(tl.float32)
        tl.store(y_rows + r[None, :], (a1 + b1).to(out_ty), mask=mask)
        tl.store(y_rows + half + r[None, :], (a2 + b2).to(out_ty), mask=mask)
        if HAS_PASS:
            p = tl.arange(0, BLOCK_P)
            p_mask = h_mask[:, None] & (p < n_pass)[None, :]
            rot_dim = 2 * half
            xp = tl.load(x_rows + rot_dim + p[None, :], mask=p_mask, other=0.0)
            tl.store(y_rows + rot_dim + p[None, :], xp.to(out_ty), mask=p_mask)

    return rotary_fwd


def _check(q, k, cos, sin, unsqueeze_dim: int) -> None:
    if unsqueeze_dim not in (1, 2):
        raise KernelInputError(
            f"apply_rotary: unsqueeze_dim must be 1 ([B,H,T,D]) or 2 ([B,T,H,D]), got {unsqueeze_dim}"
        )
    if q.dim() != 4 or k.dim() != 4:
        raise KernelInputError(
            f"apply_rotary: q and k must be 4-D, got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    t_dim = 2 if unsqueeze_dim == 1 else 1
    b, t, d = q.shape[0], q.shape[t_dim], q.shape[-1]
    if k.shape[0] != b or k.shape[t_dim] != t or k.shape[-1] != d:
        raise KernelInputError(f"apply_rotary: k {tuple(k.shape)} does not match q {tuple(q.shape)}")
    for name, c in (("cos", cos), ("sin", sin)):
        if c.dim() != 3 or c.shape[0] not in (1, b) or c.shape[1] != t:
            raise KernelInputError(
                f"apply_rotary: {name} must be [B or 1, T={t}, rot_dim], got {tuple(c.shape)}"
            )
    rot = cos.shape[-1]
    if sin.shape[-1] != rot or rot % 2 or not 0 < rot <= d:
        raise KernelInputError(
            f"apply_rotary: rot_dim={rot} (sin: {sin.shape[-1]}) must be even, equal for cos and sin, "
            f"and <= {d}"
        )


def _rotate_one(x, cos, sin, unsqueeze_dim: int):
    import torch

    out_dtype = torch.promote_types(x.dtype, cos.dtype)
    if x.stride(-1) != 1:
        x = x.contiguous()
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    # Logical (B, T, H) strides whatever the layout.
    if unsqueeze_dim == 1:
        n_b, n_h, n_t, d = x.shape
        sx = (x.stride(0), x.stride(2), x.stride(1))
        sy = (y.stride(0), y.stride(2), y.stride(1))
    else:
        n_b, n_t, n_h, d = x.shape
        sx = (x.stride(0), x.stride(1), x.stride(2))
        sy = (y.stride(0), y.stride(1), y.stride(2))
    if y.numel() == 0:
        return y
    cos = cos if cos.stride(-1) == 1 else cos.contiguous()
    sin = sin if sin.stride(-1) == 1 else sin.contiguous()
    sc_b = cos.stride(0) if cos.shape[0] > 1 else 0
    ss_b = sin.stride(0) if sin.shape[0] > 1 else 0
    rot = cos.shape[-1]
    half, n_pass = rot // 2, d - rot
    block_h = min(next_power_of_2(n_h), 16)
    grid = (n_b * n_t, -(-n_h // block_h))
    _kernels()[grid](
        x, y, cos, sin,
        *sx, *sy, sc_b, cos.stride(1), ss_b, sin.stride(1),
        n_t, n_h, half, n_pass,
        BLOCK_H=block_h, BLOCK_R=next_power_of_2(half), BLOCK_P=next_power_of_2(max(n_pass, 1)),
        HAS_PASS=n_pass > 0,
        enable_fp_fusion=False,  # keep `a*b + c*d` as two roundings, like torch (no FMA)
    )
    return y


def apply_rotary_triton(q, k, cos, sin, unsqueeze_dim: int = 1):
    """The Triton kernel (forward only), whatever the dispatcher would pick."""
    _check(q, k, cos, sin, unsqueeze_dim)
    return _rotate_one(q, cos, sin, unsqueeze_dim), _rotate_one(k, cos, sin, unsqueeze_dim)


def apply_rotary(q, k, cos, sin, unsqueeze_dim: int = 1):
    """Rotate q and k; Triton where available (see module docstring), else `apply_rotary_ref`."""
    _check(q, k, cos, sin, unsqueeze_dim)
    if backend(q, k, cos, sin) == "triton" and not needs_grad(q, k, cos, sin):
        return _rotate_one(q, cos, sin, unsqueeze_dim), _rotate_one(k, cos, sin, unsqueeze_dim)
    return apply_rotary_ref(q, k, cos, sin, unsqueeze_dim)
