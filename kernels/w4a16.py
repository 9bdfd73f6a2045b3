"""4-bit weight / 16-bit activation matmul on GPTQ-packed weights, plus the exact packing helpers.

Layout (the standard GPTQ / AutoGPTQ / gptqmodel one, 4 bits, ``pack_dtype=int32``):
- ``qweight``: int32 ``[in/8, out]``; input row ``i`` of column ``o`` is the 4-bit value
  ``(qweight[i // 8, o] >> (4 * (i % 8))) & 0xF`` (8 values packed along the input dim, low bits first).
- ``qzeros``: int32 ``[n_groups, out/8]``, packed the same way along the *output* dim, in the **gptqmodel
  v1 checkpoint convention** (``checkpoint_format: gptq``, what AutoGPTQ and ``quant_method: gptq``
  checkpoints on the Hub store): the stored word is ``pack(zeros) - 0x11111111`` modulo 2**32, i.e. each
  nibble holds ``zero - 1``. Reading adds ``0x11111111`` back to the whole word before unpacking, exactly
  as gptqmodel's ``convert_gptq_v1_to_v2_format_module`` does, so every zero in 0..15 round-trips (a zero
  of 0 borrows from the next nibble in the stored word, and the add carries it back).
  Nibble-wise readers that compute ``nibble + 1`` (old AutoGPTQ kernels) agree for zeros 1..15.
- ``scales``: fp16 ``[n_groups, out]``; ``g_idx``: int32 ``[in]``, the group of each input row
  (``i // group_size`` without act-order, any permutation-derived grouping with act-order / desc_act).
- Dequantized weight: ``W[i, o] = (q[i, o] - zero[g_idx[i], o]) * scales[g_idx[i], o]``, shape ``[in, out]``.

Contract:
- ``pack_int4(w_int)`` / ``unpack_qweight_ref(qweight)`` and ``pack_zeros(zeros)`` /
  ``unpack_zeros_ref(qzeros)``: exact torch-only inverses of each other (values 0..15; ``in`` and
  ``out`` multiples of 8).
- ``dequantize_ref(qweight, qzeros, scales, g_idx)`` -> fp32 ``[in, out]``.
- ``w4a16_matmul_ref(x, qweight, qzeros, scales, g_idx, bias=None)`` = ``x @ dequantize_ref(...) (+ bias)``
  computed in fp32, cast to ``x.dtype``; ``x`` is ``[..., in]``.
- ``w4a16_matmul(...)``: the dispatcher; the Triton kernel dequantizes tiles on the fly (any ``g_idx``,
  act-order included) and multiplies with fp32 accumulation: fp16/bf16 operands on a GPU (so the
  dequantized weight is rounded to ``x.dtype`` first), fp32 ("ieee") operands for fp32 ``x`` and in
  the interpreter. Forward-only (the quantized weight has no gradient; under autograd on ``x`` the
  dispatcher runs the reference). ``g_idx`` entries must lie in ``[0, n_groups)`` (not checked: no sync).
"""

from __future__ import annotations

from suntool.kernels.dispatch import KernelInputError, backend, kernel_builder, needs_grad

_V1_ZERO_OFFSET = 0x11111111  # 1 in each of the 8 nibbles of a word


def _shifts(device):
    import torch

    return torch.arange(0, 32, 4, dtype=torch.int64, device=device)


def _to_int32(words):
    """int64 words in [0, 2**32) -> int32 with the same bits."""
    import torch

    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _check_nibbles(values, name: str) -> None:
    if values.is_floating_point() or values.is_complex():
        raise ValueError(f"{name}: expected an integer tensor of values 0..15, got {values.dtype}")
    if values.numel() and (int(values.min()) < 0 or int(values.max()) > 15):
        raise ValueError(f"{name}: values must lie in 0..15, got [{int(values.min())}, {int(values.max())}]")


def pack_int4(w_int):
    """Pack ``[in, out]`` 4-bit values (0..15) into GPTQ ``qweight`` int32 ``[in/8, out]``."""
    _check_nibbles(w_int, "pack_int4")
    if w_int.dim() != 2 or w_int.shape[0] % 8:
        raise ValueError(f"pack_int4: expected [in, out] with in a multiple of 8, got {tuple(w_int.shape)}")
    import torch

    n_in, n_out = w_int.shape
    v = w_int.to(torch.int64).reshape(n_in // 8, 8, n_out)
    return _to_int32((v << _shifts(w_int.device)[None, :, None]).sum(dim=1))


def unpack_qweight_ref(qweight):
    """GPTQ ``qweight`` int32 ``[in/8, out]`` -> int32 ``[in, out]`` of values 0..15."""
    import torch

    # int32 arithmetic shifts are exact here: the 0xF mask drops the sign bits a negative word shifts in.
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=qweight.device)[None, :, None]
    nib = (qweight.to(torch.int32)[:, None, :] >> shifts) & 0xF
    return nib.reshape(qweight.shape[0] * 8, qweight.shape[1])


def pack_zeros(zeros):
    """Pack true zero points ``[n_groups, out]`` (0..15) into v1 ``qzeros`` int32 ``[n_groups, out/8]``."""
    _check_nibbles(zeros, "pack_zeros")
    if zeros.dim() != 2 or zeros.shape[1] % 8:
        raise ValueError(
            f"pack_zeros: expected [n_groups, out] with out a multiple of 8, got {tuple(zeros.shape)}"
        )
    import torch

    n_groups, n_out = zeros.shape
    v = zeros.to(torch.int64).reshape(n_groups, n_out // 8, 8)
    words = (v << _shifts(zeros.device)).sum(dim=-1)
    return _to_int32((words - _V1_ZERO_OFFSET) % 2**32)


def unpack_zeros_ref(qzeros):
    """v1-convention ``qzeros`` int32 ``[n_groups, out/8]`` -> true zero points int32 ``[n_groups, out]``."""
    import torch

    words = ((qzeros.to(torch.int64) & 0xFFFFFFFF) + _V1_ZERO_OFFSET) % 2**32
    nib = (words[:, :, None] >> _shifts(qzeros.device)) & 0xF
    return nib.reshape(qzeros.shape[0], qzeros.shape[1] * 8).to(torch.int32)


def default_g_idx(in_features: int, group_size: int, device=None):
    """``g_idx`` without act-order: row ``i`` belongs to group ``i // group_size`` (-1: one group)."""
    import torch

    size = in_features if group_size in (-1, 0) else group_size
    return (torch.arange(in_features, device=device) // size).to(torch.int32)


def _check(x, qweight, qzeros, scales, g_idx) -> None:
    import torch

    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32 or qweight.dim() != 2 or qzeros.dim() != 2:
        raise KernelInputError(
            f"w4a16: qweight/qzeros must be 2-D int32, got {qweight.dtype} {tuple(qweight.shape)} and "
            f"{qzeros.dtype} {tuple(qzeros.shape)}"
        )
    n_in, n_out = qweight.shape[0] * 8, qweight.shape[1]
    n_groups = scales.shape[0]
    if scales.shape != (n_groups, n_out) or qzeros.shape != (n_groups, n_out // 8) or n_out % 8:
        raise KernelInputError(
            f"w4a16: for qweight {tuple(qweight.shape)} expected scales [G, {n_out}] and qzeros "
            f"[G, {n_out // 8}] (out a multiple of 8), got {tuple(scales.shape)} and {tuple(qzeros.shape)}"
        )
    if g_idx.shape != (n_in,):
        raise KernelInputError(f"w4a16: g_idx must be [{n_in}] (in_features), got {tuple(g_idx.shape)}")
    if x is not None and x.shape[-1] != n_in:
        raise KernelInputError(f"w4a16: x has {x.shape[-1]} input features, the packed weight {n_in}")


def dequantize_ref(qweight, qzeros, scales, g_idx):
    """Dequantize GPTQ-packed 4-bit weights to fp32 ``[in, out]`` (module docstring has the convention)."""
    _check(None, qweight, qzeros, scales, g_idx)
    g = g_idx.long()
    zeros = unpack_zeros_ref(qzeros).float().index_select(0, g)  # [in, out]
    return (unpack_qweight_ref(qweight).float() - zeros).mul_(scales.float().index_select(0, g))


def w4a16_matmul_ref(x, qweight, qzeros, scales, g_idx, bias=None):
    """``x @ dequantize_ref(...)`` (+ bias) in fp32, cast to ``x.dtype``; ``x`` is ``[..., in]``."""
    y = x.float() @ dequantize_ref(qweight, qzeros, scales, g_idx)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


@kernel_builder
def _kernels(interpret: bool):
    import triton
    import triton.language as tl

    @triton.jit
    def w4a16_fwd(
        X, QW, QZ, SC, G, BIAS, Y,
        M, N, K,
        sx_m, sqw_k, sqz_g, ssc_g, sy_m,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        m_mask = rm < M
        n_mask = rn < N
        w_shift = ((rk % 8) * 4)[:, None]  # BLOCK_K is a multiple of 8, so k % 8 == rk % 8
        z_shift = ((rn % 8) * 4)[None, :]
        acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + rk
            k_mask = k < K
            kn_mask = k_mask[:, None] & n_mask[None, :]
            x_mask = m_mask[:, None] & k_mask[None, :]
            x = tl.load(X + rm[:, None].to(tl.int64) * sx_m + k[None, :], mask=x_mask, other=0.0)
            qw = tl.load(QW + (k // 8)[:, None].to(tl.int64) * sqw_k + rn[None, :], mask=kn_mask, other=0)
            g = tl.load(G + k, mask=k_mask, other=0).to(tl.int64)
            scale = tl.load(SC + g[:, None] * ssc_g + rn[None, :], mask=kn_mask, other=0.0).to(tl.float32)
            qz = tl.load(QZ + g[:, None] * sqz_g + (rn // 8)[None, :], mask=kn_mask, other=0)
            zero = ((qz + 0x11111111) >> z_shift) & 0xF  # v1 checkpoint convention, see module docstring
            w = (((qw >> w_shift) & 0xF) - zero).to(tl.float32) * scale
            if DOT_FP32:
                x = x.to(tl.float32)
            acc += tl.dot(x, w.to(x.dtype), input_precision=DOT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(BIAS + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + rm[:, None].to(tl.int64) * sy_m + rn[None, :], acc.to(Y.dtype.element_ty),
                 mask=m_mask[:, None] & n_mask[None, :])

    return w4a16_fwd


def _launch(x, qweight, qzeros, scales, g_idx, bias):
    import torch

    n_in, n_out = qweight.shape[0] * 8, qweight.shape[1]
    x2 = x.reshape(-1, n_in)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty((m, n_out), dtype=x.dtype, device=x.device)
    if m == 0:
        return y.view(*x.shape[:-1], n_out)
    from suntool.kernels.dispatch import interpreting

    # fp32 operands ("ieee", no TF32) for fp32 x and in the interpreter (no bf16 dot on CPU); else the
    # dequantized tile is rounded to x.dtype for a 16-bit tensor-core dot ("tf32" is unused for those).
    dot_fp32 = x.dtype == torch.float32 or interpreting()
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    block_n, block_k = 64, 64
    grid = (-(-m // block_m), -(-n_out // block_n))
    qweight, qzeros = qweight.contiguous(), qzeros.contiguous()
    scales, g_idx = scales.contiguous(), g_idx.to(torch.int32).contiguous()
    _kernels()[grid](
        x2, qweight, qzeros, scales, g_idx, bias if bias is not None else scales, y,
        m, n_out, n_in,
        x2.stride(0), qweight.stride(0), qzeros.stride(0), scales.stride(0), y.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        HAS_BIAS=bias is not None, DOT_FP32=dot_fp32, DOT_PRECISION="ieee" if dot_fp32 else "tf32",
        enable_fp_fusion=True,  # explicit: Triton 3.10 changes the default
    )
    return y.view(*x.shape[:-1], n_out)


def w4a16_matmul_triton(x, qweight, qzeros, scales, g_idx, bias=None):
    """The Triton kernel, whatever the dispatcher would pick."""
    _check(x, qweight, qzeros, scales, g_idx)
    return _launch(x, qweight, qzeros, scales, g_idx, bias)


def w4a16_matmul(x, qweight, qzeros, scales, g_idx, bias=None):
    """``x @ W`` for GPTQ-packed 4-bit ``W``; Triton where available (see module docstring), else the ref."""
    _check(x, qweight, qzeros, scales, g_idx)
    if backend(x, qweight, qzeros, scales, g_idx, bias) == "triton" and not needs_grad(x, bias):
        return _launch(x, qweight, qzeros, scales, g_idx, bias)
    return w4a16_matmul_ref(x, qweight, qzeros, scales, g_idx, bias)
