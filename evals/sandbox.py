"""The sandbox every execution-scored task runs model-written code in: a separate Python process.

`run_python(script, stdin, timeout_s=..., site=False)` runs `script` (source text) in a fresh
`python -I` (isolated: no user site, no PYTHON* variables; with `site=False` also `-S`, no
site-packages), in a new empty temporary working directory that is deleted afterwards, with an
empty environment, its own session (so a timeout kills every process it started), and a
wall-clock limit. It returns `SandboxRun(returncode, stdout, timed_out)`; it never raises on
anything the script does. The script itself sets its CPU/memory limits first (see
`RLIMITS_PRELUDE`), before it reads the untrusted code from stdin, so nothing the model wrote
ever runs in this process or without limits.

Users: `program` (one whitelisted expression, `site=False`) and `humaneval` (whole functions,
the official harness's semantics, `site=True` as the harness runs in the evaluating interpreter).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# First lines of every sandboxed script: CPU seconds, address space, file size and process count.
RLIMITS_PRELUDE = r"""
def _suntool_limits(cpu_s, memory_bytes):
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 24, 1 << 24))
    except Exception:
        pass
"""


@dataclass(frozen=True)
class SandboxRun:
    returncode: int | None  # None when it was killed for running past the wall-clock limit
    stdout: str
    timed_out: bool


def run_python(script: str, stdin: str, *, timeout_s: float, site: bool = False) -> SandboxRun:
    """Run `script` in a fresh, isolated interpreter with `stdin` as its input; see the module docstring."""
    flags = ["-I"] if site else ["-I", "-S"]
    with tempfile.TemporaryDirectory(prefix="suntool-sandbox-") as workdir:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and script; the untrusted code is data
            [sys.executable, *flags, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=workdir,
            env={"PATH": os.defpath, "OMP_NUM_THREADS": "1"},
            start_new_session=True,
        )
        try:
            stdout, _ = proc.communicate(stdin, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return SandboxRun(None, "", True)
        finally:
            if proc.poll() is None:
                _kill_group(proc)
        _kill_group(proc)  # anything the script left running in its session
    return SandboxRun(proc.returncode, stdout or "", False)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):  # ProcessLookupError, PermissionError: nothing left to kill
        os.killpg(proc.pid, signal.SIGKILL)
