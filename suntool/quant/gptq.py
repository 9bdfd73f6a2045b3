"""GPTQ (Frantar et al., 2022, arXiv 2210.17323) for one linear layer.

`HessianAccumulator` collects H = 2/n * sum_t x_t x_tᵀ over the calibration rows x_t (each token is
one row) that reach a linear layer, as a running average so batches of any size can be added.
`gptq_quantize(weight, hessian, ...)` then quantizes W [out, in] column by column, in the order of
the input dim (or of decreasing diag(H) with `desc_act`), each time spreading the rounding error
onto the not-yet-quantized columns through the upper Cholesky factor of H⁻¹, in lazy blocks of
`block_size` columns — the algorithm of the paper and of AutoGPTQ's `GPTQ.fasterquant`:

- dead inputs (diag(H) == 0: the calibration never activated that input) get H_ii = 1 and
  their weight column is set to 0 (it never contributes to the calibration outputs);
- dampening: H += percdamp * mean(diag(H)) * I; if the Cholesky factorization still fails, the
  dampening is raised by `percdamp` again, up to 10 times (the value used is reported);
- group quantization: the grid of a group (suntool.quant.rtn.find_params) is chosen when its first
  column is reached, from the *current* error-compensated weights of the whole group (blocks are
  cut so that a group never starts in the middle of a block it does not fit in; AutoGPTQ reads
  the grid from weights that miss the updates of the current block);
- act-order (`desc_act`): columns are processed by decreasing diag(H); groups are formed in that
  order, so `g_idx` (group of each original column) is non-monotonic, as in AutoGPTQ without
  static groups.

Everything is computed in float32 on the weight's device; nothing is printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from suntool.errors import SuntoolError
from suntool.quant.packing import check_bits
from suntool.quant.rtn import QuantizedWeight, check_group_size, find_params, quantize_codes

if TYPE_CHECKING:
    import torch


class HessianAccumulator:
    """Running H = 2/n * X Xᵀ over the rows of the inputs of one linear layer ([.., in_features])."""

    def __init__(self, in_features: int, device: torch.device | str | None = None) -> None:
        import torch

        self.in_features = in_features
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.nsamples = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        """Fold in a batch of activations [..., in_features]; every leading index is one sample."""
        import torch

        x = inputs.detach().reshape(-1, inputs.shape[-1]).to(device=self.hessian.device, dtype=torch.float32)
        if x.shape[1] != self.in_features:
            raise ValueError(f"expected inputs with {self.in_features} features, got {x.shape[1]}")
        n = x.shape[0]
        if n == 0:
            return
        total = self.nsamples + n
        self.hessian.mul_(self.nsamples / total)
        self.hessian.addmm_(x.t(), x, alpha=2.0 / total)
        self.nsamples = total


@dataclass(frozen=True)
class GPTQResult:
    """A GPTQ-quantized weight and what the algorithm measured."""

    quantized: QuantizedWeight
    loss: float  # sum over columns of (w - q)^2 / [H⁻¹]_jj / 2 — GPTQ's own error estimate
    damp: float  # the dampening fraction that made H positive definite
    dead_inputs: int  # inputs the calibration never activated


def _inverse_cholesky(hessian: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp I)⁻¹, raising damp until the factorization succeeds."""
    import torch

    n = hessian.shape[0]
    mean_diag = torch.mean(torch.diag(hessian))
    diag = torch.arange(n, device=hessian.device)
    for attempt in range(1, 11):
        damp = percdamp * attempt
        h = hessian.clone()
        h[diag, diag] += damp * mean_diag
        lower, info = torch.linalg.cholesky_ex(h)
        if int(info) != 0:
            continue
        hinv = torch.cholesky_inverse(lower)
        upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
        if int(info) == 0 and bool(torch.isfinite(upper).all()):
            return upper, damp
    raise SuntoolError(
        f"the Hessian of a layer is not positive definite even with dampening {10 * percdamp:.3f}; "
        "the calibration data is probably degenerate (too few or repeated tokens): use more "
        "calibration text, a larger damp_percent, or method='rtn'"
    )


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int = 4,
    group_size: int = 128,
    *,
    sym: bool = False,
    desc_act: bool = False,
    percdamp: float = 0.01,
    block_size: int = 128,
) -> GPTQResult:
    """Quantize `weight` [out, in] with GPTQ given the layer's input Hessian [in, in]."""
    import torch

    check_bits(bits)
    if not 0 < percdamp < 1:
        raise SuntoolError(f"damp_percent must lie in (0, 1), got {percdamp}")
    out_features, in_features = weight.shape
    if hessian.shape != (in_features, in_features):
        raise ValueError(f"hessian must be [{in_features}, {in_features}], got {tuple(hessian.shape)}")
    size = check_group_size(group_size, in_features)
    n_groups = in_features // size
    # Blocks are cut so that every group starts inside the block that holds all of it, or at the
    # first column of a block: then the grid always sees the current, fully updated weights.
    if n_groups == 1 or (size > block_size and size % block_size == 0):
        block = block_size
    elif size <= block_size:
        block = -(-block_size // size) * size
    else:
        block = size

    w = weight.detach().to(torch.float32).clone()
    h = hessian.detach().to(device=w.device, dtype=torch.float32).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0

    if desc_act:
        perm = torch.argsort(torch.diag(h), descending=True)
        w = w[:, perm]
        h = h[perm][:, perm]
    else:
        perm = torch.arange(in_features, device=w.device)

    hinv, damp = _inverse_cholesky(h, percdamp)
    del h

    codes = torch.zeros(out_features, in_features, dtype=torch.float32, device=w.device)
    scales = torch.zeros(n_groups, out_features, dtype=torch.float32, device=w.device)
    zeros = torch.zeros(n_groups, out_features, dtype=torch.float32, device=w.device)
    losses = torch.zeros(out_features, dtype=torch.float32, device=w.device)
    scale = zero = None
    for i1 in range(0, in_features, block):
        i2 = min(i1 + block, in_features)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % size == 0:  # first column of a group: its grid, from the current weights
                current = torch.cat([w1[:, i : i + size], w[:, i2 : col + size]], dim=1)
                scale, zero = find_params(current, bits, sym)
                scales[col // size] = scale
                zeros[col // size] = zero
            wcol = w1[:, i]
            d = hinv1[i, i]
            q = quantize_codes(wcol[:, None], scale, zero, bits)[:, 0]
            codes[:, col] = q
            dq = scale * (q - zero)
            losses += (wcol - dq) ** 2 / d**2 / 2
            err = (wcol - dq) / d
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]

    g_idx = torch.arange(in_features, device=w.device) // size  # group of each processed column
    if desc_act:
        invperm = torch.argsort(perm)
        codes = codes[:, invperm]
        g_idx = g_idx[invperm]
    quantized = QuantizedWeight(
        intweight=codes.to(torch.int32),
        scales=scales.to(torch.float16),
        zeros=zeros.to(torch.int32),
        g_idx=g_idx.to(torch.int32),
    )
    return GPTQResult(quantized=quantized, loss=float(losses.sum()), damp=damp, dead_inputs=int(dead.sum()))
