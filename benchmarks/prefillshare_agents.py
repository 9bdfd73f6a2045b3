"""PrefillShare's own workload: shared contexts through K task models, shared prefill vs `--no-share`.

    python benchmarks/prefillshare_agents.py [--agents 4] [--mode pipeline --mode parallel] \\
        [--rate 0.5 --rate inf] [-n 8] [--context-words 512] [--output-len 32] \\
        [--work runs/prefillshare-agents/work] [--out runs/prefillshare-agents]

Issue 12, target 3. Splits `--model` K times with `suntool split MODEL -o DIR --mode prefillshare`
(K artifacts `agent-1..K`: one shared, frozen prefill half stored once, a decode half each; reused
on a re-run), then for each `--mode` runs `suntool bench --local ... --compare --workload
agents:K:MODE` (`suntool.bench.runner.run_bench`): the shared layout (one prefill group, so a
context prefilled for agent 1 is a prefix-cache hit for agents 2..K, whichever model they are)
and the `--no-share` baseline (a prefill half and prefix cache per model) on the same planned
sessions: `-n` shared contexts of `--context-words` words per rate, each sent to the K agents in
turn (`pipeline`: agent k+1's prompt is the context + the previous answers, sent when agent k
ends) or at once (`parallel`). It prints, per mode and rate, p95 latency (of a whole session and
of one request) as baseline / shared ("× lower") and throughput (sessions/s, output tok/s) as
shared / baseline, beside the PrefillShare paper's 4.5× lower p95 and 3.9× throughput, and the
prompt tokens each layout served from its prefix cache (the server's
`suntool_prefix_cache_hit_tokens_total`). Writes `<mode>/bench.json` (+ PNG) and `compare.json`
under `--out`. Not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import vllm_harness

PAPER = {"p95_latency_lower": 4.5, "throughput": 3.9}  # PrefillShare (arXiv 2602.12029), multi-agent workloads


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--agents", type=int, default=4, help="K: task models (PrefillShare artifacts) per context")
    parser.add_argument("--mode", action="append", choices=("pipeline", "parallel"),
                        help="agents in turn or at once (repeatable; default both)")
    parser.add_argument("--rate", action="append", default=None, help="contexts/s or inf (default 0.5, inf)")
    parser.add_argument("-n", "--contexts", type=int, default=8, help="shared contexts per rate")
    parser.add_argument("--context-words", type=int, default=512, help="length of each shared context")
    parser.add_argument("--output-len", type=int, default=32, help="tokens of each agent's answer")
    parser.add_argument("--dataset", default="tasks", choices=("tasks", "random"), help="what contexts are made of")
    parser.add_argument("--dtype", default="auto", help="the server's dtype; auto: the CPU's best")
    parser.add_argument("--decode-workers", type=int, default=None, help="default: one per model, both layouts")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `suntool serve` flag")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/prefillshare-agents/work"))
    parser.add_argument("--out", type=Path, default=Path("runs/prefillshare-agents"))
    return parser.parse_args(argv)


def prepare(model: str, agents: int, work: Path) -> list[str]:
    """K PrefillShare splits of `model` (skipped when present)."""
    artifacts = []
    for number in range(1, agents + 1):
        out = work / f"agent-{number}"
        if not (out / "suntool.json").is_file():
            command = ["split", model, "-o", str(out), "--mode", "prefillshare", "--dtype", "float32", "--force"]
            print("$ suntool " + " ".join(command), flush=True)
            subprocess.run([sys.executable, "-m", "suntool", *command], check=True,
                           env={**os.environ, "COLUMNS": "160"})
        artifacts.append(str(out))
    return artifacts


def _lower(baseline: float | None, shared: float | None) -> float | None:
    """baseline / shared: how many times lower the shared layout's latency is."""
    if baseline is None or shared is None or math.isnan(baseline) or math.isnan(shared) or shared == 0:
        return None
    return baseline / shared


def _row(mode: str, shared, dedicated) -> dict:
    ratio = lambda a, b: a / b if b else None  # noqa: E731 - throughput: shared / baseline
    return {
        "mode": mode, "rate": shared.rate,
        "session_p95_lower": _lower(dedicated.sessions["latency"]["p95"], shared.sessions["latency"]["p95"]),
        "request_e2e_p95_lower": _lower(dedicated.e2e["p95"], shared.e2e["p95"]),
        "session_throughput": ratio(shared.sessions["throughput"], dedicated.sessions["throughput"]),
        "output_token_throughput": ratio(shared.output_token_throughput, dedicated.output_token_throughput),
        "prefix_cache_hit_tokens": {"shared": shared.prefix_cache_hit_tokens,
                                    "no_share": dedicated.prefix_cache_hit_tokens},
        "completed": {"shared": shared.completed, "no_share": dedicated.completed, "requests": shared.requests},
    }


def main(argv=None) -> int:
    from suntool.bench.report import _clean
    from suntool.bench.runner import BenchConfig, run_bench
    from suntool.bench.workload import WorkloadSpec

    args = parse(argv)
    if args.agents < 1:
        raise SystemExit(f"--agents must be at least 1, got {args.agents}")
    flags = vllm_harness.cpu_flags()
    dtype = vllm_harness.resolve_dtype(args.dtype, flags)
    cpu = vllm_harness.cpu_summary(flags)
    print(f"{cpu} -> serving in {dtype}", flush=True)
    artifacts = prepare(args.model, args.agents, args.work)
    rates = tuple(math.inf if r.lower() == "inf" else float(r) for r in (args.rate or ["0.5", "inf"]))
    rows, runs = [], {}
    for mode in args.mode or ["pipeline", "parallel"]:
        spec = WorkloadSpec.parse(f"agents:{args.agents}:{mode}", dataset=args.dataset, input_len=args.context_words,
                                  output_len=args.output_len, seed=args.seed)
        result = run_bench(BenchConfig(artifacts=tuple(artifacts), compare=True, rates=rates,
                                       num_requests=args.contexts, workload=spec, out=args.out / mode,
                                       decode_workers=args.decode_workers,
                                       serve_args=("--dtype", dtype, *args.serve_arg)), say=print)
        by_rate: dict[float, dict] = {}
        for run in result["runs"]:
            by_rate.setdefault(run.rate, {})[run.config] = run
        rows += [_row(mode, pair["shared"], pair["dedicated"]) for pair in by_rate.values()]
        runs[mode] = str(result["json"])

    def x(value):
        return "–" if value is None else f"×{value:.2f}"

    print(f"\n{cpu}; dtype {dtype}; {args.agents} PrefillShare task models, {args.contexts} contexts of "
          f"{args.context_words} words per rate, {args.output_len} tokens per answer")
    print("shared prefill vs --no-share (paper: p95 ×4.5 lower, throughput ×3.9)")
    print("| mode | rate | session p95 lower | request p95 lower | sessions/s | output tok/s "
          "| prefix-cache hit tokens shared / no-share |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        hits = " / ".join("–" if v is None else f"{v:.0f}" for v in r["prefix_cache_hit_tokens"].values())
        print(f"| {r['mode']} | {r['rate']:g} | {x(r['session_p95_lower'])} | {x(r['request_e2e_p95_lower'])} "
              f"| {x(r['session_throughput'])} | {x(r['output_token_throughput'])} | {hits} |")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"cpu": cpu, "dtype": dtype, "artifacts": artifacts, "paper": PAPER, "bench_json": runs,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "shared_vs_no_share": rows}
    (args.out / "compare.json").write_text(json.dumps(_clean(record), indent=2) + "\n")
    print(f"wrote {args.out / 'compare.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
