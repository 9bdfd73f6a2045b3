"""Threads or processes for the decode pool? Measures, on this machine, the two facts that decide it.

1. Compute concurrency: decode tokens/s of the same total batch run as one worker, as two
   threads in one process (torch releases the GIL inside its ops), and as two processes,
   with torch's default intra-op threads and with one thread per worker; each configuration
   `--repeats` times in rotating order, the median reported (the machine may be shared).
2. The handoff: moving one prompt's K/V from a prefill worker to a decode worker as an
   in-process tensor copy (what the engine does) versus through a multiprocessing queue
   (what a process pool would need without a shared-memory KV pool).

    .venv/bin/python benchmarks/serve_threads.py --model /tmp/art/decode --batch 16 --steps 10 --repeats 3

Writes JSON to --out and prints a table. Runs in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path


def _decode_tokens_per_s(model, batch: int, context: int, steps: int) -> float:
    import torch
    from transformers import DynamicCache

    with torch.inference_mode():
        ids = torch.randint(10, 1000, (batch, context))
        cache = DynamicCache()
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        nxt = ids[:, -1:]
        start = time.perf_counter()
        for step in range(steps):
            mask = torch.ones(batch, context + step + 1, dtype=torch.long)
            logits = model(input_ids=nxt, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1).logits
            nxt = logits[:, -1:].argmax(-1)
        return batch * steps / (time.perf_counter() - start)


def _load(path: str, threads: int | None):
    import torch
    from transformers import AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _process_worker(path, threads, batch, context, steps, barrier, results):
    model = _load(path, threads)
    _decode_tokens_per_s(model, batch, context, 2)  # warm-up
    barrier.wait()
    results.put(_decode_tokens_per_s(model, batch, context, steps))


def _one_worker(path, batch, context, steps, threads):
    import torch

    model = _load(path, None)
    torch.set_num_threads(threads or torch.get_num_threads())
    _decode_tokens_per_s(model, batch, context, 2)
    return _decode_tokens_per_s(model, batch, context, steps)


def _two_threads(path, batch, context, steps, threads):
    import torch

    model = _load(path, None)
    default = torch.get_num_threads()
    _decode_tokens_per_s(model, batch // 2, context, 2)
    barrier, rates = threading.Barrier(2), []

    def run():
        torch.set_num_threads(threads or default)  # per OS thread
        barrier.wait()
        rates.append(_decode_tokens_per_s(model, batch // 2, context, steps))

    workers = [threading.Thread(target=run) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    torch.set_num_threads(default)
    return sum(rates)


def _two_processes(path, batch, context, steps, threads):
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(path, threads, batch // 2, context, steps, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    rates = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


CONFIGS = {
    "1 worker, batch B, torch threads 1": (_one_worker, 1),
    "1 worker, batch B, torch default threads": (_one_worker, None),
    "2 threads, batch B/2 each, torch threads 1": (_two_threads, 1),
    "2 threads, batch B/2 each, torch default threads": (_two_threads, None),
    "2 processes, batch B/2 each, torch threads 1": (_two_processes, 1),
    "2 processes, batch B/2 each, torch default threads": (_two_processes, None),
}


def concurrency(path: str, batch: int, context: int, steps: int, repeats: int) -> dict:
    """Median decode tokens/s per configuration; the order rotates every repeat to spread load drift."""
    import statistics

    names = list(CONFIGS)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:
            function, threads = CONFIGS[name]
            samples[name].append(function(path, batch, context, steps, threads))
    return {name: {"median": statistics.median(v), "samples": v} for name, v in samples.items()}


def _receiver(queue, done):
    while True:
        item = queue.get()
        if item is None:
            return
        done.put(len(item))


def handoff(path: str, context: int, repeats: int) -> dict:
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    heads = config.num_key_value_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layers = [(torch.randn(1, heads, context, dim), torch.randn(1, heads, context, dim))
              for _ in range(config.num_hidden_layers)]
    megabytes = sum(k.numel() + v.numel() for k, v in layers) * 4 / 2**20
    pool = [torch.empty(context, heads, dim) for _ in range(2 * config.num_hidden_layers)]
    start = time.perf_counter()
    for _ in range(repeats):
        for i, (k, v) in enumerate(layers):
            pool[2 * i].copy_(k[0].transpose(0, 1))
            pool[2 * i + 1].copy_(v[0].transpose(0, 1))
    in_process = (time.perf_counter() - start) / repeats
    ctx = mp.get_context("spawn")
    queue, done = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_receiver, args=(queue, done))
    proc.start()
    queue.put([torch.zeros(1)])
    done.get()
    start = time.perf_counter()
    for _ in range(repeats):
        queue.put([t.numpy() for kv in layers for t in kv])
        done.get()
    through_queue = (time.perf_counter() - start) / repeats
    queue.put(None)
    proc.join()
    return {"kv_megabytes": megabytes, "in_process_copy_ms": in_process * 1000,
            "multiprocessing_queue_ms": through_queue * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an HF checkpoint dir (e.g. an artifact's decode/)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="runs/serve_threads.json")
    args = parser.parse_args()
    results = {"cpu_count": os.cpu_count(), "batch": args.batch, "context": args.context,
               "load_average_before": os.getloadavg(),
               "decode_tokens_per_s": concurrency(args.model, args.batch, args.context, args.steps, args.repeats),
               "handoff": handoff(args.model, args.context, 20)}
    results["load_average_after"] = os.getloadavg()
    for name, rate in results["decode_tokens_per_s"].items():
        print(f"{name:55s} {rate['median']:8.1f} tok/s  {[round(x, 1) for x in rate['samples']]}")
    print(json.dumps(results["handoff"], indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
