"""Backend choice (``SUNTOOL_KERNELS``, driver, interpreter), lazy triton import, per-flag kernel builds."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import suntool.kernels.dispatch as dispatch
from suntool.errors import SuntoolError
from suntool.kernels.dispatch import KernelBackendError, backend

pytestmark = pytest.mark.triton


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine without a GPU driver and without the interpreter, whatever this one has."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dispatch, "driver_active", lambda: False)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A machine whose GPU driver is active (the tensors of these tests stay on CPU)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dispatch, "driver_active", lambda: True)


def _cpu():
    return torch.zeros(2)


def test_default_auto_without_gpu_is_ref(monkeypatch, no_gpu):
    monkeypatch.delenv("SUNTOOL_KERNELS", raising=False)
    assert backend(_cpu()) == "ref"


def test_auto_needs_cuda_tensors_even_with_a_driver(monkeypatch, fake_gpu):
    monkeypatch.setenv("SUNTOOL_KERNELS", "auto")
    assert backend(_cpu(), None) == "ref"


def test_auto_with_interpreter_is_triton(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("SUNTOOL_KERNELS", "AUTO")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend(_cpu()) == "triton"


def test_ref_wins_over_interpreter(monkeypatch):
    monkeypatch.setenv("SUNTOOL_KERNELS", "ref")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend(_cpu()) == "ref"


def test_forced_triton_without_driver_or_interpreter_is_a_clear_error(monkeypatch, no_gpu):
    pytest.importorskip("triton")
    monkeypatch.setenv("SUNTOOL_KERNELS", "triton")
    with pytest.raises(KernelBackendError, match="no GPU driver is active.*TRITON_INTERPRET=1"):
        backend(_cpu())
    assert issubclass(KernelBackendError, SuntoolError)


def test_forced_triton_with_driver_but_cpu_tensors_is_an_error(monkeypatch, fake_gpu):
    pytest.importorskip("triton")
    monkeypatch.setenv("SUNTOOL_KERNELS", "triton")
    with pytest.raises(KernelBackendError, match="tensors are on cpu"):
        backend(_cpu())


def test_unknown_mode_is_an_error(monkeypatch):
    monkeypatch.setenv("SUNTOOL_KERNELS", "cuda")
    with pytest.raises(KernelBackendError, match="SUNTOOL_KERNELS='cuda'"):
        backend(_cpu())


def test_forced_triton_reaches_the_public_dispatchers(monkeypatch, no_gpu):
    pytest.importorskip("triton")
    from suntool.kernels.rmsnorm import rmsnorm

    monkeypatch.setenv("SUNTOOL_KERNELS", "triton")
    with pytest.raises(KernelBackendError):
        rmsnorm(torch.randn(2, 8), torch.ones(8))
    monkeypatch.setenv("SUNTOOL_KERNELS", "ref")
    assert rmsnorm(torch.randn(2, 8), torch.ones(8)).shape == (2, 8)


def test_driver_probe_is_false_here_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert dispatch.driver_active() is False


def test_kernels_are_built_once_per_interpreter_flag(monkeypatch):
    triton = pytest.importorskip("triton")
    from suntool.kernels import rmsnorm as mod

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    interpreted = mod._kernels()
    assert mod._kernels() is interpreted
    monkeypatch.delenv("TRITON_INTERPRET")
    compiled = mod._kernels()
    assert isinstance(compiled, triton.runtime.jit.JITFunction)
    assert not isinstance(interpreted, triton.runtime.jit.JITFunction)


def _run_python(code: str) -> str:
    env = {
        k: v for k, v in __import__("os").environ.items() if k not in ("TRITON_INTERPRET", "SUNTOOL_KERNELS")
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_kernels_imports_neither_torch_nor_triton_and_ref_path_skips_triton():
    out = _run_python(
        """
        import sys
        import suntool.kernels.affine_attention, suntool.kernels.dispatch, suntool.kernels.paged_attention
        import suntool.kernels.rmsnorm, suntool.kernels.rotary, suntool.kernels.w4a16
        print("after import:", "torch" in sys.modules, "triton" in sys.modules)
        import torch
        from suntool.kernels.rmsnorm import rmsnorm
        rmsnorm(torch.randn(2, 8), torch.ones(8))
        print("after cpu call:", "triton" in sys.modules)
        """
    )
    assert "after import: False False" in out
    assert "after cpu call: False" in out


def test_interpreter_works_when_triton_was_imported_without_the_flag():
    """Triton decorates its own library at import; the kernels must not depend on that state."""
    pytest.importorskip("triton")
    out = _run_python(
        """
        import os
        import torch, triton  # imported with TRITON_INTERPRET unset
        os.environ["TRITON_INTERPRET"] = "1"
        from suntool.kernels.paged_attention import paged_attention, paged_attention_ref
        q = torch.randn(1, 2, 16)
        kc, vc = torch.randn(2, 4, 1, 16), torch.randn(2, 4, 1, 16)
        bt, lens = torch.tensor([[1, 0]], dtype=torch.int32), torch.tensor([7], dtype=torch.int32)
        got = paged_attention(q, kc, vc, bt, lens, softcap=3.0)
        err = got - paged_attention_ref(q, kc, vc, bt, lens, softcap=3.0)
        print("max err", float(err.abs().max()))
        """
    )
    assert float(out.split("max err")[1]) < 1e-5
