"""4-bit GPTQ matmul on CPU through PyTorch's int4 CPU kernel (``_weight_int4pack_mm_for_cpu``).

The op computes ``x @ W.T`` for ``W[n, k] = (q[n, k] - 8) * scale[k // G, n] + zero[k // G, n]`` from a
packed copy of ``q`` (uint8 ``[N, K/2]``, made by ``_convert_weight_to_int4pack_for_cpu(q[N, K], 1)``)
and bf16 ``scales_and_zeros[K/G, N, 2]``. A GPTQ weight ``W[k, n] = (q - z) * s`` (see `suntool.kernels.
w4a16` for the layout and the v1 zero convention) is exactly that with ``scale = s`` and
``zero = s * (8 - z)``, so the packed copy is lossless; only bf16 rounding separates the result from the
reference (below). Checked on torch 2.13: the op dequantizes and accumulates in fp32 and rounds its
output to bf16 once; it runs only bf16 fast (fp32/fp16 activations take a scalar path 50-130x slower,
slower than dequantizing), so every activation is cast to bf16.

Contract:
- `pack_for_cpu(qweight, qzeros, scales, g_idx)` -> `CpuInt4Pack`, or ``None`` when the fast path does
  not apply: the op is missing from this torch, a tensor is not on the CPU, ``out_features`` is not a
  multiple of 16, or no op group size ``G`` in (256, 128, 64, 32) divides ``in_features`` with ``g_idx``
  constant on every aligned block of ``G`` rows (GPTQ group sizes that are multiples of 32, one group
  (-1) when ``in_features`` is a multiple of 32; act-order ``g_idx`` generally is not, and gets ``None``;
  so do group sizes 8/16/48...). The largest such ``G`` is used: each block's scale and zero are those of
  its GPTQ group, so larger GPTQ groups are repeated, not approximated. ``g_idx`` entries outside
  ``[0, n_groups)`` give ``None`` too. Inconsistent shapes raise `KernelInputError`, as the reference does.
- `w4a16_matmul_cpu(x, pack, bias=None)`: ``x`` ``[..., in]`` of any float dtype on the CPU -> ``x @ W``
  (+ bias) ``[..., out]`` in ``x.dtype``: ``x`` is cast to bf16 for the op, whose bf16 output is widened to
  fp32, the bias added in fp32 and the sum cast to ``x.dtype`` (a second rounding for bf16 ``x`` only).
  Forward-only: raises `KernelInputError` when autograd would record it (the reference handles that).
- Error against `suntool.kernels.w4a16.w4a16_matmul_ref` in fp32, per output: the bf16 casts of ``x``,
  ``s`` and ``s * (8 - z)`` (relative 2**-9 each) and the op's output rounding (2**-9 of ``|y|``) give
  ``|y - y_ref| <= 2**-9 * (|x| @ (|W| + s * (|q - 8| + |8 - z|)) + |y_ref|)`` to first order; the tests
  check twice that.
- Memory: the pack holds 0.5 byte per weight (the same as ``qweight``, which the module keeps) plus
  ``4 / G`` bytes per weight of bf16 scales and zeros.

Importing this module imports neither torch nor triton.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from suntool.kernels.dispatch import KernelInputError, needs_grad
from suntool.kernels.w4a16 import _check, unpack_qweight_ref, unpack_zeros_ref

if TYPE_CHECKING:
    import torch

OP_GROUP_SIZES = (256, 128, 64, 32)  # what _weight_int4pack_mm_for_cpu accepts, largest first
OUT_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu needs N % 16 == 0


@dataclass(frozen=True)
class CpuInt4Pack:
    """A GPTQ weight repacked for ``_weight_int4pack_mm_for_cpu`` (see the module docstring)."""

    weight: torch.Tensor  # uint8 [out, in / 2]
    scales_and_zeros: torch.Tensor  # bf16 [in / group_size, out, 2]
    group_size: int  # the op's group size (a divisor of the GPTQ one)
    in_features: int
    out_features: int


def available() -> bool:
    """True when this torch has the CPU int4 pack and matmul ops."""
    import torch

    return all(
        hasattr(torch.ops.aten, name)
        for name in ("_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu")
    )


def _op_group_size(g_idx, n_groups: int) -> int | None:
    """The largest accepted op group size on whose aligned blocks ``g_idx`` is constant, else None."""
    n_in = g_idx.shape[0]
    groups = g_idx.long()
    if n_in == 0 or bool((groups < 0).any()) or bool((groups >= n_groups).any()):
        return None
    for size in OP_GROUP_SIZES:
        if n_in % size == 0:
            blocks = groups.view(n_in // size, size)
            if bool((blocks == blocks[:, :1]).all()):
                return size
    return None


def pack_for_cpu(qweight, qzeros, scales, g_idx) -> CpuInt4Pack | None:
    """Repack GPTQ 4-bit tensors for the CPU int4 op, or None where it does not apply (module docstring)."""
    _check(None, qweight, qzeros, scales, g_idx)
    if not available() or any(t.device.type != "cpu" for t in (qweight, qzeros, scales, g_idx)):
        return None
    n_in, n_out = qweight.shape[0] * 8, qweight.shape[1]
    if n_out % OUT_MULTIPLE:
        return None
    size = _op_group_size(g_idx, scales.shape[0])
    if size is None:
        return None
    import torch

    first = g_idx.long()[::size]  # the GPTQ group of each op block
    scale = scales.float().index_select(0, first)  # [in / size, out]
    zero = unpack_zeros_ref(qzeros).index_select(0, first).float()
    # (q - z) * s == (q - 8) * s + s * (8 - z); both fp32 products and their sum are exact for fp16 s
    scales_and_zeros = torch.stack([scale, scale * (8 - zero)], dim=-1).to(torch.bfloat16).contiguous()
    codes = unpack_qweight_ref(qweight).t().contiguous()  # int32 [out, in], values 0..15
    try:
        weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    except RuntimeError:  # a constraint of some other torch version than the one checked above
        return None
    return CpuInt4Pack(weight, scales_and_zeros, size, n_in, n_out)


def w4a16_matmul_cpu(x, pack: CpuInt4Pack, bias=None):
    """``x @ W`` (+ bias) in ``x.dtype`` through the CPU int4 op; ``x`` is ``[..., in]`` on the CPU."""
    import torch

    if not x.is_floating_point() or x.device.type != "cpu" or x.shape[-1] != pack.in_features:
        raise KernelInputError(
            f"w4a16_matmul_cpu: expected float x [..., {pack.in_features}] on the CPU, got {x.dtype} "
            f"{tuple(x.shape)} on {x.device}"
        )
    if needs_grad(x, bias):
        raise KernelInputError("w4a16_matmul_cpu is forward-only; run w4a16_matmul_ref under autograd")
    x2 = x.reshape(-1, pack.in_features).to(torch.bfloat16).contiguous()
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, pack.weight, pack.group_size, pack.scales_and_zeros)
    if bias is not None:
        y = y.float() + bias.float()
    return y.to(x.dtype).view(*x.shape[:-1], pack.out_features)
