"""Where one decode step's time goes, by part, at several batch sizes: the engine's compact forward vs the
transformers path it replaced, in one run on the same machine.

    python benchmarks/decode_profile.py ARTIFACT [--batch 1 --batch 16 --batch 64] [--context 128]
        [--steps 5] [--threads 2] [--json runs/decode-profile.json]

For each path (`compact`: `suntool.serve.runner.CompactLM`; `transformers`: the decode half's own
modules over a `transformers.Cache` view of the pool, `EngineConfig(compact=False)`) and batch size B,
B sequences with `--context` cached tokens each (random ids; their blocks are not prefilled, since
the values in the pool do not change a step's cost) take `--steps` decode steps through
`DecodeWorker._forward`, the function the engine runs, under `torch.profiler`. The table splits a step into:

- matmuls (aten linear/addmm/mm/matmul: the projections, the MLP and the lm_head),
- attention (the C paged kernel, or SDPA and the paged reference over the gathered history),
- K/V writes (index_copy_ into the pool) and gathers (index_select of histories, the old path),
- other model ops (norms, rotary, activations, embedding, cat/copies),
- sampling (`choose_tokens`: argmax / per-row sampling),
- scheduler (everything else in the step: block tables, slot indexes, Python between ops),

and separately, per generated token: detokenization (`Engine.accept`: incremental decode, stop
strings, events) and HTTP streaming (formatting one SSE chunk as `suntool serve` does). The
profile's own overhead inflates small ops; the wall-clock step time is measured without it.
Not a test: it reports what this machine does now (write the CPU flags beside the figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

CATEGORIES = {
    "matmuls": ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul", "aten::bmm", "mkldnn::_linear_pointwise"),
    "K/V writes": ("aten::index_copy_", "aten::index_copy"),
    "gathers": ("aten::index_select", "aten::gather", "aten::index"),
    "attention": ("aten::scaled_dot_product_attention", "attention"),
}


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--batch", type=int, action="append", default=None)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def _make_sequences(engine, batch: int, context: int):
    import torch

    from suntool.serve.sequence import SamplingParams, Sequence

    model = next(iter(engine.models.values()))
    allocator = engine.allocator
    gen = torch.Generator().manual_seed(0)
    seqs = []
    for _ in range(batch):
        ids = torch.randint(10, 1000, (context + 1,), generator=gen).tolist()
        seq = Sequence(model=model, prompt_ids=ids, params=SamplingParams(max_tokens=10**6, ignore_eos=True),
                       sink=lambda event: None)
        seq.block_table = allocator.allocate(allocator.blocks_for(context + 64))
        seqs.append(seq)
    for seq in seqs:  # the pool's contents do not change a step's cost: no prefill needed
        seq.num_cached = context
    group = model.decode
    return group, seqs


def _attention_marked(engine):
    """Wrap the attention entry points so the profiler sees them as one 'attention' range."""
    import torch

    from suntool.serve import runner

    def wrap(function):
        def marked(*args, **kwargs):
            with torch.profiler.record_function("attention"):
                return function(*args, **kwargs)
        return marked

    runner.CompactLM._decode_attention = wrap(runner.CompactLM._decode_attention)


def _split(events) -> dict[str, float]:
    """Self CPU time (ms) per category, from profiler key averages."""
    totals = dict.fromkeys([*CATEGORIES, "other model ops"], 0.0)
    for event in events:
        name = event.key
        for category, names in CATEGORIES.items():
            if name in names:
                totals[category] += event.self_cpu_time_total / 1000
                break
        else:
            if name.startswith("aten::"):
                totals["other model ops"] += event.self_cpu_time_total / 1000
    return totals


def profile_path(artifact: str, compact: bool, batches: list[int], context: int, steps: int, threads: int):
    import torch

    from suntool.serve.engine import Engine, EngineConfig
    from suntool.serve.sampling import choose_tokens

    engine = Engine.from_artifacts([artifact], config=EngineConfig(compact=compact, torch_threads=threads,
                                                                    kv_blocks=max(batches) * (context + 80) // 16 + 8))
    rows = []
    try:
        torch.set_num_threads(threads)
        worker = engine.decode_workers[0]
        with torch.inference_mode():
            for batch in batches:
                group, seqs = _make_sequences(engine, batch, context)
                worker._forward(group, seqs)  # warm-up
                wall = []
                for _ in range(steps):
                    start = time.perf_counter()
                    worker._forward(group, seqs)
                    wall.append(time.perf_counter() - start)
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    for _ in range(steps):
                        with torch.profiler.record_function("sampling-mark"):
                            pass
                        worker._forward(group, seqs)
                profiled = prof.key_averages()
                step_ms = statistics.median(wall) * 1000
                parts = {name: ms / steps for name, ms in _split(profiled).items()}
                logits = torch.randn(batch, group.model.config.vocab_size)
                start = time.perf_counter()
                for _ in range(steps):
                    choose_tokens(logits, seqs)
                parts["sampling"] = (time.perf_counter() - start) / steps * 1000
                profiled_total = sum(e.self_cpu_time_total for e in profiled) / 1000 / steps
                parts["scheduler"] = max(0.0, step_ms - sum(parts.values()))
                rows.append({"path": "compact" if compact else "transformers", "batch": batch, "context": context,
                             "step_ms": step_ms, "tokens_per_s": batch / (step_ms / 1000), "parts_ms": parts,
                             "profiled_ms": profiled_total})
                print(json.dumps(rows[-1]), flush=True)
                for seq in seqs:
                    engine.allocator.free(seq.block_table)
    finally:
        engine.close()
    return rows


def per_token_costs(artifact: str) -> dict[str, float]:
    """Detokenization (Engine.accept) and SSE formatting per token, in microseconds."""
    import torch

    from suntool.serve import protocol
    from suntool.serve.engine import Engine, EngineConfig
    from suntool.serve.sequence import SamplingParams, Sequence

    engine = Engine.from_artifacts([artifact], config=EngineConfig(kv_blocks=16))
    try:
        model = next(iter(engine.models.values()))
        tokens = model.encode("The quick brown fox jumps over the lazy dog. " * 40, add_special_tokens=False)[:400]
        from suntool.generation import RowText

        seq = Sequence(model=model, prompt_ids=tokens[:1], params=SamplingParams(max_tokens=10**6, ignore_eos=True),
                       sink=lambda event: None)
        seq.text = RowText(model.tokenizer, ())
        start = time.perf_counter()
        for token in tokens:
            engine.accept(seq, token)
        accept_us = (time.perf_counter() - start) / len(tokens) * 1e6
        start = time.perf_counter()
        for _ in range(len(tokens)):
            body = protocol.chunk_body("cmpl-1", model.name, False, text=" word")
            f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()
        sse_us = (time.perf_counter() - start) / len(tokens) * 1e6
    finally:
        engine.close()
    del torch
    return {"detokenization_us_per_token": accept_us, "sse_chunk_us_per_token": sse_us}


def main(argv=None) -> int:
    import os

    args = parse(argv)
    batches = args.batch or [1, 16, 64]
    threads = args.threads or len(os.sched_getaffinity(0))
    _attention_marked(None)
    rows = []
    for compact in (True, False):
        rows += profile_path(args.artifact, compact, batches, args.context, args.steps, threads)
    costs = per_token_costs(args.artifact)
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in Path("/proc/cpuinfo").read_text()]
    print(f"cpu flags: {' '.join(flags)}; torch threads {threads}; context {args.context}")
    parts = list(rows[0]["parts_ms"])
    print("| path | batch | step ms | tok/s | " + " | ".join(parts) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(parts))
    for row in rows:
        cells = " | ".join(f"{row['parts_ms'][p]:.1f}" for p in parts)
        print(f"| {row['path']} | {row['batch']} | {row['step_ms']:.1f} | {row['tokens_per_s']:.0f} | {cells} |")
    by_key = {(r["path"], r["batch"]): r for r in rows}
    for batch in batches:
        ratio = by_key[("transformers", batch)]["step_ms"] / by_key[("compact", batch)]["step_ms"]
        print(f"batch {batch}: compact step is x{ratio:.2f} faster than the transformers path")
    print(f"per token: detokenization {costs['detokenization_us_per_token']:.0f} us, "
          f"SSE chunk {costs['sse_chunk_us_per_token']:.0f} us")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu_flags": flags, "threads": threads, "rows": rows, **costs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
