"""Run-time choice between a Triton kernel and its pure-torch reference.

Contract:
- `backend(*tensors)` returns ``"triton"`` or ``"ref"`` for one call of a kernel on ``tensors``.
  It reads the environment variable ``SUNTOOL_KERNELS`` (``auto`` | ``ref`` | ``triton``, default
  ``auto``) at every call, so a test or a user can switch backends without re-importing anything.
  - ``ref``: always the pure-torch reference.
  - ``triton``: always the Triton kernel; raises `KernelBackendError` when Triton cannot run here
    (not installed, or no GPU driver and ``TRITON_INTERPRET`` unset, or the tensors are not on a
    CUDA device while compiling for a GPU).
  - ``auto``: Triton iff (a GPU driver is active — ``triton.runtime.driver.active.get_current_target()``
    succeeds — and every tensor is on a CUDA device) or ``TRITON_INTERPRET=1`` is set (the Triton
    interpreter runs kernels on CPU tensors; the tests use it). Otherwise the reference.
- `interpreting()` tells whether Triton's interpreter is on. Kernel files build their ``@triton.jit``
  functions lazily and once per value of this flag (Triton reads ``TRITON_INTERPRET`` when a function
  is decorated, not when it is launched), so flipping the flag inside one process is safe.
- Triton also decorates its own library (``tl.sum``, ``tl.max``, ``tl.zeros``...) once, when triton is
  imported, for the interpreter or for the compiler. So that the interpreter works whatever the flag
  was at that import, the kernels call only builtins: ``tl.reduce(x, axis, tl.standard._sum_combine)``
  (what ``tl.sum`` does; the interpreter spots the combine function and uses numpy) and ``tl.full``.
  Compiling for a GPU needs triton imported with the flag off — the normal case outside tests.
- Triton is imported only inside functions: importing this module (or any ``suntool.kernels`` file)
  never imports triton, and auto mode with CPU tensors never imports it either.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Literal

from suntool.errors import SuntoolError

Backend = Literal["triton", "ref"]

ENV_VAR = "SUNTOOL_KERNELS"
_MODES = ("auto", "ref", "triton")


class KernelBackendError(SuntoolError):
    """The requested kernel backend cannot run on this machine or on these tensors."""


class KernelInputError(SuntoolError):
    """A kernel was called with inputs it cannot handle (empty batch, zero-length sequence, bad shape)."""


def interpreting() -> bool:
    """True when Triton's interpreter is on (``TRITON_INTERPRET``, parsed by Triton itself).

    Imports triton only when the variable is set, so the common case stays import-free.
    """
    if not os.environ.get("TRITON_INTERPRET") or not triton_installed():
        return False
    import triton

    return bool(triton.knobs.runtime.interpret)


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.cache
def driver_active() -> bool:
    """True when Triton is installed and a GPU driver is active (checked once per process)."""
    if not triton_installed():
        return False
    try:
        import triton

        triton.runtime.driver.active.get_current_target()
    except Exception:  # no driver: RuntimeError("0 active drivers"), or a broken CUDA install
        return False
    return True


def requested_mode() -> str:
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise KernelBackendError(
            f"{ENV_VAR}={os.environ.get(ENV_VAR)!r} is not one of {', '.join(_MODES)}; "
            f"unset it or pick one of those values."
        )
    return mode


def backend(*tensors) -> Backend:
    """The backend one kernel call on ``tensors`` (the ``None`` entries are ignored) should use."""
    mode = requested_mode()
    if mode == "ref":
        return "ref"
    present = [t for t in tensors if t is not None]
    on_cuda = bool(present) and all(t.is_cuda for t in present)
    if mode == "triton":
        if not triton_installed():
            raise KernelBackendError(
                f"{ENV_VAR}=triton but triton is not installed; install suntool[gpu] or set {ENV_VAR}=ref."
            )
        if interpreting():
            return "triton"
        if not driver_active():
            raise KernelBackendError(
                f"{ENV_VAR}=triton but no GPU driver is active; run on a GPU, set TRITON_INTERPRET=1 to "
                f"use Triton's CPU interpreter, or set {ENV_VAR}=ref (or auto)."
            )
        if not on_cuda:
            devices = sorted({str(t.device) for t in present})
            raise KernelBackendError(
                f"{ENV_VAR}=triton but the tensors are on {', '.join(devices) or 'no device'}; move them to "
                f"a CUDA device or set {ENV_VAR}=auto."
            )
        return "triton"
    if interpreting():
        return "triton" if triton_installed() else "ref"
    if on_cuda and driver_active():
        return "triton"
    return "ref"


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (>= 1); Triton block shapes must be powers of two."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def needs_grad(*tensors) -> bool:
    """True when autograd would record an op on ``tensors`` (forward-only kernels then defer to the ref)."""
    import torch

    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def kernel_builder(build):
    """Decorate ``build(interpret: bool)`` that defines and returns a file's ``@triton.jit`` kernels.

    The returned zero-argument function calls ``build`` once per value of `interpreting()` and caches
    the result: ``@triton.jit`` picks the interpreter or the compiler when it decorates, so kernels
    built under one flag value must not be reused under the other.
    """
    cached = functools.cache(build)

    @functools.wraps(build)
    def get():
        return cached(interpreting())

    return get
