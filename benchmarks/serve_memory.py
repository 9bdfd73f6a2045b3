"""Resident memory of a started engine with the dense weight copies kept vs released, in one run.

    python benchmarks/serve_memory.py ARTIFACT [ARTIFACT ...] [--kv-memory-gib 0.25] [--json out.json]

Each configuration starts `Engine.from_artifacts` in a fresh process (so neither sees the other's
freed memory), returns freed heap pages to the system (`malloc_trim`), reads VmRSS / RssAnon /
RssFile from /proc/self/status and closes the engine. Linux only. Not a test: it reports what
this machine does (docs/performance.md, "One copy of the weights").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import ctypes, gc, json, sys
from suntool.serve.engine import Engine, EngineConfig
release, kv, arts = sys.argv[1] == "1", float(sys.argv[2]), sys.argv[3:]
engine = Engine.from_artifacts(arts, names=[f"m{i}" for i in range(len(arts))],
                               config=EngineConfig(release_dense_weights=release, kv_memory_gib=kv))
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
status = {k: int(v.split()[0]) // 1024 for k, v in (l.split(":", 1) for l in open("/proc/self/status"))
          if k in ("VmRSS", "RssAnon", "RssFile")}
print("RESULT", json.dumps({"release": release, "describe": engine.describe(), **status}))
engine.close()
"""


def measure(artifacts: list[str], release: bool, kv_memory_gib: float) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, "1" if release else "0", str(kv_memory_gib), *artifacts],
                         capture_output=True, text=True, check=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--kv-memory-gib", type=float, default=0.25)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = [measure(args.artifacts, release, args.kv_memory_gib) for release in (False, True)]
    print("| dense weights | VmRSS MiB | RssAnon MiB | RssFile MiB |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {'released' if row['release'] else 'kept'} | {row['VmRSS']} | {row['RssAnon']} | {row['RssFile']} |")
    print(f"released / kept: ×{rows[1]['VmRSS'] / rows[0]['VmRSS']:.2f} resident memory")
    print(rows[1]["describe"])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"artifacts": args.artifacts, "rows": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
