"""Resident memory and speed of a started engine with the dense weight copies kept vs released, in one run.

    python benchmarks/serve_memory.py ARTIFACT [ARTIFACT ...] [--kv-memory-gib 0.25] [--rounds 2]
        [--prompts 64] [--output-len 64] [--json out.json]

Each configuration starts `Engine.from_artifacts` in a fresh process (so neither sees the other's
freed memory), returns freed heap pages to the system (`malloc_trim`), reads VmRSS / RssAnon /
RssFile from /proc/self/status, then generates `--output-len` tokens (`ignore_eos`) for
`--prompts` random prompts of 40–200 tokens spread over the artifacts, all submitted at once, and
reports output tokens/s (load excluded). The two configurations alternate for `--rounds` rounds;
the table gives the median. Linux only. Not a test: it reports what this machine does
(docs/performance.md, "One copy of the weights").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import ctypes, gc, json, random, sys, threading, time
from suntool.serve.engine import Engine, EngineConfig
from suntool.serve.sequence import SamplingParams
release, kv, arts = sys.argv[1] == "1", float(sys.argv[2]), sys.argv[5:]
count, tokens = int(sys.argv[3]), int(sys.argv[4])
names = [f"m{i}" for i in range(len(arts))]
engine = Engine.from_artifacts(arts, names=names, config=EngineConfig(release_dense_weights=release, kv_memory_gib=kv))
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
status = {k: int(v.split()[0]) // 1024 for k, v in (l.split(":", 1) for l in open("/proc/self/status"))
          if k in ("VmRSS", "RssAnon", "RssFile")}
rng = random.Random(0)
prompts = [[rng.randrange(100, 20000) for _ in range(rng.randrange(40, 200))] for _ in range(count)]
done = threading.Semaphore(0)
sink = lambda event: done.release() if event.finish_reason is not None else None
start = time.perf_counter()
for index, prompt in enumerate(prompts):
    engine.submit(names[index % len(names)], prompt, SamplingParams(max_tokens=tokens, ignore_eos=True), sink)
for _ in prompts:
    done.acquire()
speed = count * tokens / (time.perf_counter() - start)
print("RESULT", json.dumps({"release": release, "describe": engine.describe(), "tokens_per_s": speed, **status}))
engine.close()
"""


def measure(artifacts: list[str], release: bool, kv_memory_gib: float, prompts: int, output_len: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, "1" if release else "0", str(kv_memory_gib), str(prompts),
                          str(output_len), *artifacts], capture_output=True, text=True, check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--kv-memory-gib", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    runs = {False: [], True: []}
    for _ in range(args.rounds):
        for release in (False, True):
            runs[release].append(measure(args.artifacts, release, args.kv_memory_gib, args.prompts, args.output_len))
            print(f"{'released' if release else 'kept':>8}: {runs[release][-1]['VmRSS']} MiB, "
                  f"{runs[release][-1]['tokens_per_s']:.1f} tok/s", flush=True)
    rows = {release: {key: statistics.median(run[key] for run in done)
                      for key in ("VmRSS", "RssAnon", "RssFile", "tokens_per_s")} for release, done in runs.items()}
    print("| dense weights | VmRSS MiB | RssAnon MiB | RssFile MiB | output tok/s |")
    print("|---|---:|---:|---:|---:|")
    for release, row in rows.items():
        name = "released" if release else "kept"
        memory = f"{row['VmRSS']:.0f} | {row['RssAnon']:.0f} | {row['RssFile']:.0f}"
        print(f"| {name} | {memory} | {row['tokens_per_s']:.1f} |")
    print(f"released / kept: ×{rows[True]['VmRSS'] / rows[False]['VmRSS']:.2f} resident memory, "
          f"×{rows[True]['tokens_per_s'] / rows[False]['tokens_per_s']:.2f} output tok/s")
    print(runs[True][-1]["describe"])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"artifacts": args.artifacts, "settings": vars(args),
                       "median": {str(k): v for k, v in rows.items()}, "runs": {str(k): v for k, v in runs.items()}},
                      handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
