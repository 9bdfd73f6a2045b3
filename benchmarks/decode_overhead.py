"""Decode step time with the kernels path on vs off, same model, interleaved in one run (not a test).

    python benchmarks/decode_overhead.py [--model smollm2-135m] [--batches 1,8] [--context 256]
                                         [--steps 16] [--rounds 3] [--threads N] [--device cpu|cuda]
                                         [--dtype float32|bfloat16|float16] [--json OUT]

Two views of one loaded model share every weight tensor (a deep copy whose parameters and buffers
are the original's): one stays plain transformers (its own attention implementation, SDPA for
SmolLM2), the other gets `suntool.kernel_path.enable_kernels` (RMSNorm, rotary, paged decode attention
through the dispatchers; on a CPU the dispatchers run the torch references, on a GPU the Triton
kernels). For each batch size, a
random prompt of `--context` tokens is prefilled once with `suntool.handoff.prefill`, the handoff is
copied, and `suntool.handoff.decode_steps` of the two views are advanced in lockstep, one step each,
alternating which goes first, so both see the same context lengths and the same machine load. Each
step (forward + greedy pick) is timed; `--rounds` repeats the whole thing from the prefill.

Reported per batch size, for wall-clock time and for the process's CPU time (which excludes the time
the process was preempted, so it is the steadier figure on a shared machine): median step time of each
path, `ratio = kernels / plain` of the medians (the target is <= 1.05: the dispatch path adds no
measurable overhead), the median of the per-step paired ratios, and whether the greedy tokens of the
two paths were identical.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def shared_weight_copy(model):
    """A deep copy of `model`'s modules that shares its parameter and buffer tensors (no extra weights)."""
    import copy

    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def _timed_step(generator, times: list[tuple[float, float]], tokens: list, sync):
    """Advance `generator` one decode step; record (wall seconds, process CPU seconds) and its tokens."""
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    step = next(generator)
    sync()
    times.append((time.perf_counter() - wall, time.process_time() - cpu))
    tokens.append(step.tokens.clone())


def measure(plain, kernels, batch: int, context: int, steps: int, seed: int) -> dict:
    """One round: prefill once, then `steps` lockstep decode steps of each path."""
    import copy

    import torch

    from suntool.handoff import SamplingConfig, decode_steps, prefill

    generator = torch.Generator().manual_seed(seed)
    vocab = plain.config.vocab_size
    ids = torch.randint(100, vocab - 1, (batch, context), generator=generator)
    mask = torch.ones_like(ids)
    sync = torch.cuda.synchronize if plain.device.type == "cuda" else (lambda: None)
    if batch > 1:  # ragged prompts, left-padded, as a served batch is
        for row in range(1, batch):
            mask[row, : row * context // (2 * batch)] = 0
    config = SamplingConfig(max_new_tokens=steps, eos_token_ids=())
    with torch.no_grad():
        handoff = prefill(plain, ids.to(plain.device), mask.to(plain.device))
        runs = {"plain": (plain, handoff), "kernels": (kernels, copy.deepcopy(handoff))}
        gens = {name: decode_steps(model, h, config) for name, (model, h) in runs.items()}
        times = {name: [] for name in runs}
        tokens = {name: [] for name in runs}
        for step in range(steps):
            order = ("plain", "kernels") if step % 2 == 0 else ("kernels", "plain")
            for name in order:
                _timed_step(gens[name], times[name], tokens[name], sync)
    same = all(torch.equal(a, b) for a, b in zip(tokens["plain"], tokens["kernels"], strict=True))
    return {"times": times, "tokens_equal": same}


def run(model_name: str, batches: list[int], context: int, steps: int, rounds: int, device: str = "cpu",
        dtype: str = "float32") -> dict:
    import torch

    from suntool.checkpoint import load_model
    from suntool.kernel_path import enable_kernels
    from suntool.kernels.dispatch import backend
    from suntool.models import resolve_model

    path = resolve_model(model_name)
    plain = load_model(path, dtype=dtype, device=device)
    kernels = enable_kernels(shared_weight_copy(plain))
    assert next(plain.parameters()).data_ptr() == next(kernels.parameters()).data_ptr()
    info = {
        "model": model_name,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "plain_attention": plain.config._attn_implementation,
        "kernels_attention": kernels.config._attn_implementation,
        "kernel_backend": backend(torch.zeros(1, device=device)),
        "context": context,
        "steps": steps,
        "rounds": rounds,
        "results": [],
    }
    print(f"{model_name}: plain={info['plain_attention']} vs kernels={info['kernels_attention']} "
          f"(backend {info['kernel_backend']}), {info['threads']} threads, context {context}, "
          f"{steps} steps x {rounds} rounds, interleaved", flush=True)
    for batch in batches:
        samples = {"plain": [], "kernels": []}
        same = True
        for round_index in range(rounds):
            result = measure(plain, kernels, batch, context, steps, seed=round_index)
            for name in samples:  # the first step of a round also warms caches: dropped from both paths
                samples[name] += result["times"][name][1:]
            same = same and result["tokens_equal"]
        row = {"batch": batch, "samples": len(samples["plain"]), "tokens_equal": same}
        for clock, index in (("wall", 0), ("cpu", 1)):
            plain_t = [t[index] for t in samples["plain"]]
            kernel_t = [t[index] for t in samples["kernels"]]
            row[f"plain_{clock}_ms"] = 1e3 * statistics.median(plain_t)
            row[f"kernels_{clock}_ms"] = 1e3 * statistics.median(kernel_t)
            row[f"{clock}_ratio"] = row[f"kernels_{clock}_ms"] / row[f"plain_{clock}_ms"]
            row[f"{clock}_paired_ratio"] = statistics.median(k / p for p, k in zip(plain_t, kernel_t, strict=True))
        info["results"].append(row)
        print(f"batch {batch:3d}: wall plain {row['plain_wall_ms']:7.2f} kernels {row['kernels_wall_ms']:7.2f} ms/step "
              f"ratio {row['wall_ratio']:.3f} (paired {row['wall_paired_ratio']:.3f}) | cpu plain "
              f"{row['plain_cpu_ms']:7.2f} kernels {row['kernels_cpu_ms']:7.2f} ms/step ratio {row['cpu_ratio']:.3f} "
              f"(paired {row['cpu_paired_ratio']:.3f}) | n={row['samples']}, tokens {'equal' if same else 'DIFFER'}",
              flush=True)
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="built-in name or HF checkpoint dir")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--context", type=int, default=256, help="prompt tokens per row before decoding")
    parser.add_argument("--steps", type=int, default=16, help="decode steps per round and path")
    parser.add_argument("--rounds", type=int, default=3, help="prefill + interleaved decode repetitions")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = parser.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if not batches or min(batches) < 1 or args.context < 2 or args.steps < 2 or args.rounds < 1:
        parser.error("need batch sizes >= 1, --context >= 2, --steps >= 2 and --rounds >= 1")
    info = run(args.model, batches, args.context, args.steps, args.rounds, args.device, args.dtype)
    arguments = argv if argv is not None else sys.argv[1:]
    info["command"] = " ".join(["python", "benchmarks/decode_overhead.py", *arguments])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
