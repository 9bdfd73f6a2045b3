"""Prompt spans through the paged kernel vs through SDPA: one forward of the engine's compact runner, both ways.

    python benchmarks/span_attention.py ARTIFACT [--threads 2] [--repeats 5] [--json runs/span-attention.json]

A mixed step carries prompt spans behind its decode rows: a burst of prefix-cache hits is dozens of
short spans (the new tail of each prompt, reading its cached prefix), a long prompt is one long span.
`CompactLM` attends a span either with `scaled_dot_product_attention` over its gathered history (a
gather, a mask and an SDPA per span per layer), or row by row through the paged decode kernel (its
K/V are in the pool before attention). `suntool.serve.runner.KERNEL_SPAN_ROWS` is the longest span
sent to the kernel. For each shape (spans × new tokens, cached history, decode rows) this times the
whole forward with that limit at 0 (SDPA only) and at 4096 (kernel only) and prints the ratio.
Not a test: it reports what this machine does now (write the CPU flags beside the figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

SHAPES = (  # (spans, new tokens per span, cached tokens before each span, decode rows)
    (29, 9, 96, 3), (8, 16, 128, 16), (4, 32, 128, 16), (2, 64, 256, 16), (1, 128, 0, 16), (1, 128, 256, 16),
    (1, 256, 0, 0), (1, 512, 0, 0),
)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    from suntool.serve import runner as runner_module
    from suntool.serve.engine import Engine, EngineConfig
    from suntool.serve.runner import decode_input, mixed_input
    from suntool.serve.sequence import SamplingParams, Sequence

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine.from_artifacts([args.artifact], names=["m"], config=EngineConfig(decode_workers=1))
    try:
        model = engine.models["m"]
        runner, pool, allocator = model.decode.runner, engine.pool, engine.allocator
        if runner is None:
            print("this artifact does not run on the compact forward", file=sys.stderr)
            return 1
        gen = torch.Generator().manual_seed(0)
        rows = []

        def sequence(cached: int, new: int) -> Sequence:
            ids = torch.randint(10, 1000, (cached + new + 1,), generator=gen).tolist()
            seq = Sequence(model=model, prompt_ids=ids, params=SamplingParams(max_tokens=8, ignore_eos=True),
                           sink=lambda event: None)
            seq.block_table = allocator.allocate(allocator.blocks_for(cached + new + 8))
            return seq

        for spans, new, cached, decode in SHAPES:
            prompt_seqs = [sequence(cached, new) for _ in range(spans)]
            decode_seqs = [sequence(128, 0) for _ in range(decode)]
            for seq in decode_seqs:
                seq.num_cached = 128
            chunks = [(seq, cached, cached + new) for seq in prompt_seqs]
            times = {}
            for label, limit in (("sdpa", 0), ("kernel", 4096)):
                runner_module.KERNEL_SPAN_ROWS = limit
                with torch.inference_mode():
                    samples = []
                    for _ in range(args.repeats + 1):
                        step = (mixed_input(pool, decode_seqs, chunks, [True] * spans) if decode_seqs or chunks
                                else decode_input(pool, decode_seqs))
                        start = time.perf_counter()
                        runner.forward(pool, step)
                        samples.append(time.perf_counter() - start)
                times[label] = statistics.median(samples[1:])
            for seq in prompt_seqs + decode_seqs:
                allocator.free(seq.block_table)
            row = {"spans": spans, "new_tokens": new, "cached_tokens": cached, "decode_rows": decode,
                   "sdpa_ms": times["sdpa"] * 1e3, "kernel_ms": times["kernel"] * 1e3,
                   "kernel_over_sdpa": times["kernel"] / times["sdpa"]}
            rows.append(row)
            print(f"{spans:>3} spans × {new:>4} new after {cached:>4} cached, {decode:>3} decode rows: "
                  f"SDPA {row['sdpa_ms']:7.1f} ms  kernel {row['kernel_ms']:7.1f} ms  ×{row['kernel_over_sdpa']:.2f}",
                  flush=True)
    finally:
        engine.close()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
