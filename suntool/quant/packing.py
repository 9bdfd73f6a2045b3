"""Exact pack/unpack of the standard GPTQ checkpoint layout ("v1", as AutoGPTQ and gptqmodel write it).

For a linear layer with weight W [out_features, in_features], quantized per group of input
columns, the checkpoint holds four tensors:

- `qweight` int32 [in_features * bits / 32, out_features]: the integer codes q in [0, 2^bits-1],
  packed along the *input* dim, lowest bits first (code of input row r sits in word r*bits//32 at
  bit r*bits%32). For 3 bits, 32 codes fill 3 words as one little-endian bit stream, so codes 10
  and 21 of each block straddle two words (AutoGPTQ's `qlinear_cuda_old.pack` layout).
- `qzeros` int32 [n_groups, out_features * bits / 32]: the zero-points, packed along the *output*
  dim the same way, each stored as `zero - 1` (the v1 off-by-one: AutoGPTQ's `pack` does
  `zeros -= 1` before packing and its readers add 1 back; gptqmodel's v1<->v2 conversion adds or
  subtracts 0x11111111 on the packed words for 4 bits).
- `scales` fp16 [n_groups, out_features].
- `g_idx` int32 [in_features]: the group of each input column (non-monotonic with act-order).

Dequantization: W[o, i] = scales[g_idx[i], o] * (q[o, i] - zero[g_idx[i], o]).

The zero offset for 2/4/8 bits is applied to whole packed words modulo 2^32, exactly as gptqmodel
converts v1 <-> v2, so every zero-point in [0, 2^bits-1] round-trips exactly. Readers that unpack
each field first and add 1 afterwards (AutoGPTQ's torch path, exllama-style kernels) agree with
this only when no zero-point is 0; suntool's quantizers therefore never emit zero-point 0 (see
`suntool.quant.rtn`). For 3 bits the offset is applied per field (mod 8), as gptqmodel does.

All functions are pure: they take and return CPU or GPU tensors and never modify their inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from suntool.errors import SuntoolError

if TYPE_CHECKING:
    import torch

SUPPORTED_BITS = (2, 3, 4, 8)
_WORD = 32
_MASK32 = (1 << 32) - 1


@dataclass(frozen=True)
class PackedGPTQ:
    """The four tensors of one GPTQ-quantized linear layer, in checkpoint layout."""

    qweight: torch.Tensor  # int32 [in*bits/32, out]
    qzeros: torch.Tensor  # int32 [n_groups, out*bits/32]
    scales: torch.Tensor  # fp16 [n_groups, out]
    g_idx: torch.Tensor  # int32 [in]

    @property
    def in_features(self) -> int:
        return int(self.g_idx.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.qweight.shape[1])


def check_bits(bits: int) -> None:
    """Raise SuntoolError unless `bits` is a width the GPTQ checkpoint format supports."""
    if bits not in SUPPORTED_BITS:
        raise SuntoolError(
            f"bits={bits} is not supported: the GPTQ checkpoint format stores 2, 3, 4 or 8 bits "
            f"per weight; pass one of {SUPPORTED_BITS} (4 is the usual choice)."
        )


def pack_multiple(bits: int) -> int:
    """How many codes fill a whole number of int32 words (so a packed dim must be a multiple of it)."""
    check_bits(bits)
    return _WORD // math.gcd(_WORD, bits)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 words holding unsigned 32-bit values -> int32 with the same bits (two's complement)."""
    import torch

    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def _check_divisible(n: int, bits: int, what: str) -> None:
    multiple = pack_multiple(bits)
    if n % multiple:
        raise SuntoolError(
            f"{what} = {n} cannot be packed at {bits} bits: the GPTQ layout needs it to be a multiple "
            f"of {multiple} (32 / gcd(32, bits))."
        )


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes [R, C] in [0, 2^bits-1] along dim 0 into int32 words [R*bits/32, C]."""
    import torch

    check_bits(bits)
    rows, cols = codes.shape
    _check_divisible(rows, bits, "the packed dimension")
    per_block = pack_multiple(bits)  # codes per block
    words_per_block = per_block * bits // _WORD
    blocks = rows // per_block
    values = (codes.to(torch.int64) & ((1 << bits) - 1)).reshape(blocks, per_block, cols)
    if _WORD % bits == 0:  # no code straddles two words: one shift per code position, then OR (= sum)
        shifts = torch.arange(0, _WORD, bits, dtype=torch.int64, device=codes.device).view(1, -1, 1)
        return _to_int32((values << shifts).sum(dim=1))
    words = torch.zeros(blocks, words_per_block, cols, dtype=torch.int64, device=codes.device)
    for k in range(per_block):
        offset = k * bits
        word, shift = divmod(offset, _WORD)
        words[:, word] |= (values[:, k] << shift) & _MASK32
        if shift + bits > _WORD:  # the code straddles into the next word (3 bits only)
            words[:, word + 1] |= values[:, k] >> (_WORD - shift)
    return _to_int32(words.reshape(blocks * words_per_block, cols))


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `pack_rows`: int32 words [R*bits/32, C] -> int32 codes [R, C]."""
    import torch

    check_bits(bits)
    nwords, cols = packed.shape
    per_block = pack_multiple(bits)
    words_per_block = per_block * bits // _WORD
    if nwords % words_per_block:
        raise SuntoolError(
            f"a packed {bits}-bit tensor must have a multiple of {words_per_block} words along its "
            f"packed dimension, got {nwords}; the checkpoint is corrupt or its `bits` is wrong."
        )
    blocks = nwords // words_per_block
    mask = (1 << bits) - 1
    if _WORD % bits == 0:  # arithmetic shifts of int32 are fine: the mask drops the sign bits
        shifts = torch.arange(0, _WORD, bits, dtype=torch.int32, device=packed.device).view(1, -1, 1)
        codes32 = torch.bitwise_and(packed.to(torch.int32).unsqueeze(1) >> shifts, mask)
        return codes32.reshape(nwords * (_WORD // bits), cols)
    words = (packed.to(torch.int64) & _MASK32).reshape(blocks, words_per_block, cols)
    codes = torch.empty(blocks, per_block, cols, dtype=torch.int64, device=packed.device)
    for k in range(per_block):
        offset = k * bits
        word, shift = divmod(offset, _WORD)
        value = words[:, word] >> shift
        if shift + bits > _WORD:
            value = value | (words[:, word + 1] << (_WORD - shift))
        codes[:, k] = value & mask
    return codes.reshape(blocks * per_block, cols).to(torch.int32)


def pack_cols(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes [R, C] along dim 1 into int32 words [R, C*bits/32]."""
    return pack_rows(codes.t(), bits).t().contiguous()


def unpack_cols(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `pack_cols`."""
    return unpack_rows(packed.t(), bits).t().contiguous()


def _zero_offset_word(bits: int) -> int:
    """The constant whose every `bits`-wide field is 1 (0x11111111 for 4 bits)."""
    return sum(1 << (bits * k) for k in range(_WORD // bits))


def encode_qzeros(zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """Zero-points [n_groups, out] in [0, 2^bits-1] -> v1 `qzeros` (packed `zero - 1`)."""
    import torch

    if bits == 3:  # fields straddle words: apply the offset per field, as gptqmodel does
        return pack_cols((zeros.to(torch.int64) - 1) & 0x7, bits)
    words = pack_cols(zeros, bits).to(torch.int64) & _MASK32
    return _to_int32((words - _zero_offset_word(bits)) & _MASK32)


def decode_qzeros(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    """v1 `qzeros` -> zero-points [n_groups, out] (int32); the exact inverse of `encode_qzeros`."""
    import torch

    check_bits(bits)
    if bits == 3:
        return (unpack_cols(qzeros, bits) + 1) & 0x7
    words = (qzeros.to(torch.int64) & _MASK32) + _zero_offset_word(bits)
    return unpack_cols(_to_int32(words & _MASK32), bits)


def pack(
    intweight: torch.Tensor,
    zeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
) -> PackedGPTQ:
    """Pack one quantized linear layer into the GPTQ v1 checkpoint layout.

    `intweight` [out, in] integer codes, `zeros` [n_groups, out] integer zero-points (both in
    [0, 2^bits-1]), `scales` [n_groups, out] (stored as fp16), `g_idx` [in] group of each input
    column. Raises SuntoolError on shapes or values the format cannot hold.
    """
    import torch

    check_bits(bits)
    if intweight.dim() != 2:
        raise SuntoolError(f"intweight must be 2-D [out, in], got shape {tuple(intweight.shape)}")
    out_features, in_features = intweight.shape
    n_groups = zeros.shape[0] if zeros.dim() == 2 else -1
    if zeros.shape != (n_groups, out_features) or scales.shape != (n_groups, out_features):
        raise SuntoolError(
            f"zeros {tuple(zeros.shape)} and scales {tuple(scales.shape)} must both be [n_groups, "
            f"{out_features}] for a weight of shape {tuple(intweight.shape)}"
        )
    if g_idx.shape != (in_features,):
        raise SuntoolError(f"g_idx must have shape ({in_features},), got {tuple(g_idx.shape)}")
    if in_features and (int(g_idx.min()) < 0 or int(g_idx.max()) >= n_groups):
        raise SuntoolError(f"g_idx values must lie in [0, {n_groups}), the number of groups")
    maxq = (1 << bits) - 1
    for name, values in (("intweight", intweight), ("zeros", zeros)):
        if values.is_floating_point():
            raise SuntoolError(f"{name} must be an integer tensor, got {values.dtype}")
        if values.numel() and (int(values.min()) < 0 or int(values.max()) > maxq):
            raise SuntoolError(f"{name} values must lie in [0, {maxq}] for {bits}-bit codes")
    _check_divisible(in_features, bits, "in_features")
    _check_divisible(out_features, bits, "out_features")
    return PackedGPTQ(
        qweight=pack_rows(intweight.t(), bits),
        qzeros=encode_qzeros(zeros, bits),
        scales=scales.to(torch.float16).contiguous(),
        g_idx=g_idx.to(torch.int32).contiguous(),
    )


def unpack(qweight: torch.Tensor, qzeros: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `pack` for the integer parts: -> (intweight [out, in], zeros [n_groups, out]), int32."""
    intweight = unpack_rows(qweight, bits).t().contiguous()
    zeros = decode_qzeros(qzeros, bits)
    if zeros.shape[1] != intweight.shape[0]:
        raise SuntoolError(
            f"qzeros unpacks to {zeros.shape[1]} output columns but qweight has {intweight.shape[0]}; "
            "the tensors do not belong together or `bits` is wrong"
        )
    return intweight, zeros


def dequantize(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The float weight [out, in] that the packed tensors encode (computed in fp32, cast to `dtype`).

    The result is the transpose of a contiguous [in, out] tensor (the layout the codes unpack to);
    `torch.nn.functional.linear` takes it as is.
    """
    import torch

    codes = unpack_rows(qweight, bits)  # [in, out]
    zeros = decode_qzeros(qzeros, bits)
    if zeros.shape[1] != codes.shape[1]:
        raise SuntoolError(
            f"qzeros unpacks to {zeros.shape[1]} output columns but qweight has {codes.shape[1]}; "
            "the tensors do not belong together or `bits` is wrong"
        )
    groups = g_idx.to(torch.long)
    scale = scales.to(torch.float32).index_select(0, groups)  # [in, out]
    zero = zeros.to(torch.float32).index_select(0, groups)
    weight = (codes.to(torch.float32) - zero).mul_(scale)
    return (weight if dtype is None else weight.to(dtype)).t()
