"""Soak test: many requests over several models with client disconnects; nothing lost, nothing leaked.

Starts `suntool serve --local` on a free loopback port (tiny random models built here unless
`--local ART...` is given), then sends `--requests` completions (default 1000) from up to
`--concurrency` clients: a mix of streaming and plain, plain and chat, random models and
lengths, `ignore_eos` so every answer has exactly `max_tokens` tokens. `--disconnect` of them
(default 10 %) are streams the client abandons after 1–3 chunks. Bounded in count and in
time (`--max-seconds`); loopback only.

Checks, each a line of the summary, exit status 1 if any fails:
- lost = 0: every request not abandoned got HTTP 200 and all of its tokens (and `[DONE]`);
- leaked blocks = 0: once the server is idle, `/health` reports 0 KV blocks in use;
- healthy: `/health` is ok and one more request succeeds.

    .venv/bin/python benchmarks/soak.py                      # tiny models, ~1-3 minutes on 2 cores
    .venv/bin/python benchmarks/soak.py --local A B C --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tiny_artifacts(root: Path, count: int) -> list[str]:
    """`count` SUN artifacts sharing one decode half, from a tiny random Llama (no download)."""
    sys.path.insert(0, str(ROOT))
    from suntool.split import SplitConfig, split
    from tests.tiny_models import build_checkpoint

    checkpoint = build_checkpoint("llama", root / "checkpoint")
    out = []
    for index in range(count):
        target = root / f"task{index}"
        split(SplitConfig(model=str(checkpoint), out=target))
        out.append(str(target))
    return out


async def one(client, url: str, rng: random.Random, models: list[str], abandon: bool) -> dict:
    model = rng.choice(models)
    max_tokens = rng.randint(4, 48)
    chat = rng.random() < 0.3
    stream = abandon or rng.random() < 0.6
    words = " ".join(rng.choice(["the", "capital", "of", "France", "is", "Paris", "12", "plus", "30"])
                     for _ in range(rng.randint(1, 40)))
    body = {"model": model, "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}
    if chat:
        body["messages"] = [{"role": "user", "content": words}]
    else:
        body["prompt"] = words
    if stream:
        body["stream_options"] = {"include_usage": True}
    endpoint = url + ("/v1/chat/completions" if chat else "/v1/completions")
    result = {"abandon": abandon, "ok": False, "status": None, "stream": stream}
    try:
        if not stream:
            response = await client.post(endpoint, json=body)
            result["status"] = response.status_code
            usage = response.json().get("usage") or {}
            result["ok"] = response.status_code == 200 and usage.get("completion_tokens") == max_tokens
            return result
        keep = rng.randint(1, 3)
        async with client.stream("POST", endpoint, json=body) as response:
            result["status"] = response.status_code
            seen, done, tokens = 0, False, None
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                seen += 1
                if abandon and seen >= keep:
                    return result  # leaving the block closes the connection mid-stream
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
            result["ok"] = response.status_code == 200 and done and tokens == max_tokens
    except Exception as err:  # counted as lost unless abandoned
        result["error"] = f"{type(err).__name__}: {err}"
    return result


async def load(url: str, models: list[str], requests: int, concurrency: int, disconnect: float, seed: int,
               deadline: float) -> list[dict]:
    import httpx

    rng = random.Random(seed)
    plan = [rng.random() < disconnect for _ in range(requests)]
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits) as client:

        async def guarded(index: int, abandon: bool):
            async with semaphore:
                if time.monotonic() > deadline:
                    return {"abandon": abandon, "ok": False, "skipped": True}
                return await one(client, url, random.Random(seed * 100003 + index), models, abandon)

        return await asyncio.gather(*(guarded(i, a) for i, a in enumerate(plan)))


def wait_idle(url: str, timeout: float) -> dict:
    """Poll /health (another process: there is no event to wait on) until nothing runs or waits."""
    import httpx

    end = time.monotonic() + timeout
    while True:
        health = httpx.get(url + "/health", timeout=10).json()
        if health["running"] == 0 and health["waiting"] == 0 or time.monotonic() > end:
            return health
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local", nargs="*", default=None, help="artifacts to serve (default: 3 tiny models)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--disconnect", type=float, default=0.10)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `suntool serve` flag")
    parser.add_argument("--out", default=None, help="write the summary JSON here")
    args = parser.parse_args()
    if args.requests > 5000 or args.max_seconds > 3600:
        parser.error("the soak is bounded: at most 5000 requests and 3600 seconds")

    import httpx

    from suntool.bench.runner import LocalServer

    with tempfile.TemporaryDirectory() as scratch:
        import os

        os.environ.setdefault("SUNTOOL_STORE", str(Path(scratch) / "store"))
        artifacts = args.local or tiny_artifacts(Path(scratch), 3)
        serve_args = ["--kv-blocks", "512", "--block-size", "8", "--max-queue", str(args.requests),
                      "--decode-workers", "2", *args.serve_arg]
        started = time.monotonic()
        with LocalServer(tuple(artifacts), serve_args, print) as server:
            url = server.url
            assert url.startswith(("http://127.0.0.1:", "http://[::1]:")), url  # loopback only
            models = [m["id"] for m in httpx.get(url + "/v1/models", timeout=30).json()["data"]]
            results = asyncio.run(load(url, models, args.requests, args.concurrency, args.disconnect, args.seed,
                                       time.monotonic() + args.max_seconds))
            health = wait_idle(url, 60)
            final = httpx.post(url + "/v1/completions", json={"model": models[0], "prompt": "hi", "max_tokens": 4},
                               timeout=60)
            metrics = httpx.get(url + "/metrics", timeout=30).text
        elapsed = time.monotonic() - started
    kept = [r for r in results if not r["abandon"]]
    aborted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("suntool_requests_total{") and 'finish_reason="abort"' in line)
    summary = {
        "requests": len(results), "models": len(models), "abandoned_by_client": len(results) - len(kept),
        "completed": sum(r["ok"] for r in kept), "lost": sum(not r["ok"] for r in kept),
        "skipped_by_time_bound": sum(bool(r.get("skipped")) for r in results),
        "server_aborted": int(aborted), "kv_blocks_used_when_idle": health["kv_blocks_used"],
        "healthy": health["status"] == "ok" and final.status_code == 200, "seconds": round(elapsed, 1),
        "errors": sorted({r.get("error", f"HTTP {r['status']}") for r in kept if not r["ok"]})[:5],
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    failed = summary["lost"] or summary["kv_blocks_used_when_idle"] or not summary["healthy"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
