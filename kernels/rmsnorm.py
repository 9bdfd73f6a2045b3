"""RMSNorm forward, plain and fused with the residual add: Triton kernel, torch reference, dispatcher.

Contract:
- ``rmsnorm(x, weight, eps, offset=0.0)`` -> ``y = x * rsqrt(mean(x**2, -1) + eps) * (offset + weight)``
  over the last dimension of ``x`` (any leading shape), computed in fp32 and cast once to ``x.dtype``.
  ``offset=1.0`` is Gemma's ``(1 + w)`` convention (the reference equals HF's Gemma-2 RMSNorm bit for
  bit); ``offset=0.0`` is Llama's, which HF rounds to the input dtype *before* the weight multiply, so
  in bf16/fp16 the results can differ from HF Llama by one rounding of the input dtype. The Triton
  kernel agrees with the reference to fp32 rounding (reduction order), then the same final cast.
- ``rmsnorm_residual(x, residual, weight, eps, offset=0.0)`` -> ``(y, s)`` with ``s = x + residual`` rounded
  to ``x.dtype`` (exactly what ``residual + hidden_states`` does in HF) and ``y = rmsnorm(s, ...)``.
- ``rmsnorm_ref`` / ``rmsnorm_residual_ref`` are the pure-torch references (differentiable).
- The Triton kernel is forward-only; the dispatcher uses it when `suntool.kernels.dispatch.backend`
  says "triton" and autograd is not recording the call, and the reference otherwise.
"""

from __future__ import annotations

from suntool.kernels.dispatch import KernelInputError, backend, kernel_builder, needs_grad, next_power_of_2


def rmsnorm_ref(x, weight, eps: float = 1e-6, offset: float = 0.0):
    """Pure-torch RMSNorm over the last dim: fp32 math, one cast back to ``x.dtype``."""
    import torch

    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    scale = offset + weight.float() if offset else weight.float()  # skip a no-op add (decode calls it often)
    return (y * scale).to(x.dtype)


def rmsnorm_residual_ref(x, residual, weight, eps: float = 1e-6, offset: float = 0.0):
    """Pure-torch fused residual add + RMSNorm: returns ``(rmsnorm(x + residual), x + residual)``."""
    s = x + residual
    return rmsnorm_ref(s, weight, eps, offset), s


@kernel_builder
def _kernels(interpret: bool):
    # tl.reduce(x, axis, tl.standard._sum_combine / _elementwise_max) is tl.sum / tl.max written with
    # builtins only, so the interpreter runs it whatever TRITON_INTERPRET was when triton was imported
    # (see suntool.kernels.dispatch).
    import triton
    import triton.language as tl

    @triton.jit
    def rmsnorm_fwd(
        X, R, W, Y, S,
        stride_x, stride_r, stride_y, stride_s,
        n_cols, eps, offset,
        BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            r = tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
            s = (x + r).to(S.dtype.element_ty)
            tl.store(S + row * stride_s + cols, s, mask=mask)
            x = s.to(tl.float32)
        mean_sq = tl.reduce(x * x, 0, tl.standard._sum_combine) / n_cols
        rstd = 1.0 / tl.sqrt(mean_sq + eps)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        y = x * rstd * (offset + w)
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)

    return rmsnorm_fwd


def _check(x, weight, residual=None) -> None:
    if x.shape[-1] != weight.shape[-1] or weight.dim() != 1:
        raise KernelInputError(
            f"rmsnorm: weight must be 1-D of size {x.shape[-1]} (the last dim of x), "
            f"got {tuple(weight.shape)}"
        )
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise KernelInputError(
            f"rmsnorm_residual: residual {tuple(residual.shape)}/{residual.dtype} must match "
            f"x {tuple(x.shape)}/{x.dtype}"
        )


def _launch(x, weight, eps: float, offset: float, residual=None):
    import torch

    n_cols = x.shape[-1]
    x2 = x.reshape(-1, n_cols)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    if residual is not None:
        r2 = residual.reshape(-1, n_cols)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
        s = torch.empty_like(y)
    else:
        r2, s = x2, y  # unused by the kernel when HAS_RESIDUAL is false
    if x2.shape[0] > 0:
        _kernels()[(x2.shape[0],)](
            x2, r2, weight.contiguous(), y, s,
            x2.stride(0), r2.stride(0), y.stride(0), s.stride(0),
            n_cols, float(eps), float(offset),
            BLOCK=next_power_of_2(n_cols), HAS_RESIDUAL=residual is not None,
            enable_fp_fusion=True,  # explicit: Triton 3.10 changes the default
        )
    y = y.view(x.shape)
    return (y, s.view(x.shape)) if residual is not None else y


def rmsnorm_triton(x, weight, eps: float = 1e-6, offset: float = 0.0):
    """The Triton kernel (forward only), whatever the dispatcher would pick."""
    _check(x, weight)
    return _launch(x, weight, eps, offset)


def rmsnorm_residual_triton(x, residual, weight, eps: float = 1e-6, offset: float = 0.0):
    """The fused Triton kernel (forward only), whatever the dispatcher would pick."""
    _check(x, weight, residual)
    return _launch(x, weight, eps, offset, residual)


def rmsnorm(x, weight, eps: float = 1e-6, offset: float = 0.0):
    """RMSNorm over the last dim of ``x``; Triton where available (see module docstring), else the ref."""
    _check(x, weight)
    if backend(x, weight) == "triton" and not needs_grad(x, weight):
        return _launch(x, weight, eps, offset)
    return rmsnorm_ref(x, weight, eps, offset)


def rmsnorm_residual(x, residual, weight, eps: float = 1e-6, offset: float = 0.0):
    """``(rmsnorm(x + residual), x + residual)`` in one pass where Triton is available."""
    _check(x, weight, residual)
    if backend(x, residual, weight) == "triton" and not needs_grad(x, residual, weight):
        return _launch(x, weight, eps, offset, residual)
    return rmsnorm_residual_ref(x, residual, weight, eps, offset)
