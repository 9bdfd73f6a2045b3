"""Acceptance 1 of `suntool simulate`: does the profile-fed simulator predict `suntool bench --compare`?

    .venv/bin/python benchmarks/simulate_validate.py runs/sim/task-a runs/sim/task-b runs/sim/task-c \
        runs/sim/task-d --out runs/sim/validate

1. measures a profile of the local engine (`suntool bench --local ART --profile`, the first
   artifact: all four share the decode half and the architecture);
2. runs `suntool bench --local ART... --compare --decode-workers 1 --workload zipf:1.0
   --rate 1 --rate 2 --rate inf -n 32 --output-len 32` (shared vs --no-share) `--bench-runs`
   times (default 3): on two shared cores one run's TPOT moves by ±15 % from the next
   (measured: 60, 68 and 80 ms for the same shared layout at 1 req/s on three quiet runs),
   so the measured value is the median of the runs, and their spread is printed beside it;
3. replays the bench's own planned requests (same seed: arrival times, models, prompts
   tokenized with the artifact's tokenizer, 32 output tokens, and the prompt blocks the
   server's prefix cache already holds from earlier requests and rates) through the simulator
   with that profile (layouts `sun` = shared, `dedicated` = --no-share; one prefill
   thread per model, one decode worker, all threads on the profile's cores);
4. prints predicted vs measured output tokens/s and TPOT p50 (and TTFT p50) with the
   error, and writes `validate.json`.

`--profile FILE` / `--bench FILE` (repeatable) reuse earlier measurements instead of re-measuring.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RATES = ("1", "2", "inf")


def suntool(*args: str) -> None:
    command = [sys.executable, "-m", "suntool", *args]
    print("$ suntool " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def find_run(measured: list[dict], label: str, rate: float) -> dict:
    """The bench.json run of layout `label` at `rate` (inf written as "inf", "Infinity", null or a float)."""
    for run in measured:
        value = run["rate"]
        same = value == rate or (math.isinf(rate) and (value in ("inf", "Infinity", None) or (
            isinstance(value, float) and math.isinf(value))))
        if run["config"] == label and same:
            return run
    raise SystemExit(f"no {label} run at rate {rate} in the bench results")


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


BLOCK = 16  # the engine's KV block: its prefix cache holds full blocks of prompt[:-1], per prefill group


def planned_requests(artifacts: list[str], rate: float, count: int, output_len: int, seed: int, cache: dict):
    """The bench's requests for `rate`, with the prompt tokens the server's prefix cache already holds.

    The server keeps its prefix cache across the rates it is benched at (the same prompts each time), so
    `cache` (model -> set of block-prefix tuples) carries over from one rate to the next, as on the server.
    """
    from transformers import AutoTokenizer

    from suntool.bench.workload import WorkloadSpec, plan_requests
    from suntool.simulate.workload import requests_from_records

    names = [Path(a).name for a in artifacts]
    tokenizer = AutoTokenizer.from_pretrained(str(Path(artifacts[0]) / "prefill"))
    spec = WorkloadSpec(popularity="zipf", alpha=1.0, dataset="tasks", output_len=output_len, seed=seed)
    records = []
    for p in plan_requests(spec, names, count, rate):
        ids = tokenizer(p.prompt, add_special_tokens=True)["input_ids"]
        seen = cache.setdefault(p.model, set())
        blocks = [tuple(ids[: (i + 1) * BLOCK]) for i in range((len(ids) - 1) // BLOCK)]
        hits = next((i for i, b in enumerate(blocks) if b not in seen), len(blocks))
        seen.update(blocks)
        records.append((p.at, names.index(p.model), len(ids), p.max_tokens, hits * BLOCK))
    return requests_from_records(records)


def simulate(profile: str, artifacts: list[str], rate: float, count: int, output_len: int, seed: int,
             cache: dict) -> dict:
    from suntool.simulate.cluster import ClusterConfig, plan_cluster
    from suntool.simulate.costs import ProfileCosts
    from suntool.simulate.metrics import SLOTarget, summarize
    from suntool.simulate.profile import load_profile
    from suntool.simulate.sim import simulate as run

    prof = load_profile(profile)
    costs = ProfileCosts(prof)
    requests = planned_requests(artifacts, rate, count, output_len, seed, cache)
    out = {}
    for layout, label in (("sun", "shared"), ("dedicated", "dedicated")):
        plan = plan_cluster(ClusterConfig(layout=layout, models=len(artifacts), prefill_devices=len(artifacts),
                                          decode_devices=1, shared_host_cores=prof.cores))
        outcome = run(plan, requests, costs, costs, shared_host_cores=prof.cores, thread_speedup=prof.thread_speedup,
                      pair_speed=prof.pair_speed)
        out[label] = summarize(outcome, plan.devices, SLOTarget())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--out", default="runs/sim/validate")
    parser.add_argument("--profile", help="reuse this profile instead of measuring one")
    parser.add_argument("--bench", action="append", help="reuse this bench.json instead of running the benchmark "
                        "(repeatable: one per run)")
    parser.add_argument("--bench-runs", type=int, default=3,
                        help="benchmark runs; measured = their median, with the spread printed")
    parser.add_argument("-n", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile-batches", default="1,2,4,8,16,32")
    parser.add_argument("--profile-contexts", default="32,128,384")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loads = {"start": load_average()}
    profile = args.profile or str(out / "profile.json")
    if not args.profile:
        suntool("bench", "--local", args.artifacts[0], "--profile", profile, "--profile-batches", args.profile_batches,
                "--profile-contexts", args.profile_contexts)
        loads["after_profile"] = load_average()
    benches = args.bench or []
    if not benches:
        rates = [a for r in RATES for a in ("--rate", r)]
        for run_index in range(1, args.bench_runs + 1):  # runs minutes apart: the spread is the machine's own noise
            bench_dir = out / f"bench-{run_index}"
            suntool("bench", "--local", *args.artifacts, "--compare", "--decode-workers", "1", "--workload",
                    "zipf:1.0", *rates, "-n", str(args.n), "--output-len", str(args.output_len), "--seed",
                    str(args.seed), "-o", str(bench_dir))
            benches.append(str(bench_dir / "bench.json"))
            loads[f"after_bench_{run_index}"] = load_average()
    measured_runs = [json.loads(Path(b).read_text())["runs"] for b in benches]
    rows, cache = [], {}
    for rate_text in RATES:
        rate = math.inf if rate_text == "inf" else float(rate_text)
        predicted = simulate(profile, args.artifacts, rate, args.n, args.output_len, args.seed, cache)
        for label in ("shared", "dedicated"):
            runs = [find_run(measured, label, rate) for measured in measured_runs]
            sim = predicted[label]
            row = {"rate": rate_text, "layout": label}
            for key, value, predicted_value in (
                    ("tok_s", lambda r: r["output_token_throughput"], sim.output_token_throughput),
                    ("tpot_p50", lambda r: r["tpot"]["p50"], sim.tpot["p50"]),
                    ("ttft_p50", lambda r: r["ttft"]["p50"], sim.ttft["p50"])):
                values = [value(r) for r in runs]
                row[key] = (statistics.median(values), predicted_value)
                row[f"{key}_runs"] = values
            rows.append(row)
    print(f"\nprofile {profile} · bench {', '.join(benches)} · load averages {loads}")
    print("measured: the median of the runs, [lowest–highest] below each row")
    header = (f"{'rate':>5} {'layout':>10} | {'tok/s meas':>10} {'pred':>7} {'err':>7} | {'TPOT p50 meas':>13} "
              f"{'pred':>7} {'err':>7} | {'TTFT p50 meas':>13} {'pred':>7} {'err':>7}")
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = []
        for key, scale in (("tok_s", 1), ("tpot_p50", 1e3), ("ttft_p50", 1e3)):
            measured_value, predicted_value = row[key]
            error = (predicted_value - measured_value) / measured_value * 100
            row[f"{key}_error_pct"] = error
            width = 10 if key == "tok_s" else 13
            cells.append(f"{measured_value * scale:>{width}.1f} {predicted_value * scale:>7.1f} {error:>+6.1f}%")
        print(f"{row['rate']:>5} {row['layout']:>10} | " + " | ".join(cells))
        if len(benches) > 1:
            spread = []
            for key, scale, width in (("tok_s", 1, 10), ("tpot_p50", 1e3, 13), ("ttft_p50", 1e3, 13)):
                values = row[key + "_runs"]
                spread.append(f"[{min(values) * scale:.1f}–{max(values) * scale:.1f}]".rjust(width).ljust(width + 16))
            print(f"{'':>5} {'':>10} | " + " | ".join(spread))
    print("\nshared / dedicated (other load scales both layouts alike, so the ratio is the steadier check):")
    ratios = []
    for rate_text in RATES:
        pair = {r["layout"]: r for r in rows if r["rate"] == rate_text}
        shared, dedicated = pair["shared"], pair["dedicated"]
        ratio = {key: (shared[key][0] / dedicated[key][0], shared[key][1] / dedicated[key][1])
                 for key in ("tok_s", "tpot_p50")}
        ratios.append({"rate": rate_text, **ratio})
        print(f"{rate_text:>5}: tok/s x{ratio['tok_s'][0]:.2f} measured, x{ratio['tok_s'][1]:.2f} predicted · "
              f"TPOT p50 x{ratio['tpot_p50'][0]:.2f} measured, x{ratio['tpot_p50'][1]:.2f} predicted")
    within = [abs(r["tok_s_error_pct"]) <= 15 and abs(r["tpot_p50_error_pct"]) <= 15 for r in rows]
    print(f"\nwithin 15 % on tok/s and TPOT p50: {sum(within)}/{len(within)} rows (TPOT/TTFT in ms)")
    result = {"profile": profile, "bench": benches, "load_averages": loads, "rows": rows, "ratios": ratios,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "validate.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out / 'validate.json'}")


if __name__ == "__main__":
    main()
