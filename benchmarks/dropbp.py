"""DropBP vs plain backward: training step time as a ratio measured in one run, and peak memory.

    .venv/bin/python benchmarks/dropbp.py [--model smollm2-135m] [--method full] [--p 0.5]
        [--batch-size 4] [--prompt-len 64] [--completion-len 64] [--pairs 8] [--out FILE.json]

One process loads the model through the library's own training path
(`suntool.train.methods.build_method`: the same loss, the same DropBP drop layers),
calibrates DropBP's rates as the training loop does after 10% of its steps (sensitivity
on two examples, greedy allocation under the (1-p) FLOPs budget), then alternates plain and
DropBP optimizer steps (forward + backward + clip + AdamW) on the same fixed batch:
ABAB... after warm-up steps of each, so drift of a shared machine hits both alike. A plain step
is the same module with no branch dropped. Reported: median step time of each, the
ratio DropBP/plain, forward and backward medians, and the realised kept-FLOPs fraction.

Memory: the bytes of activations autograd holds for backward at the end of a plain
forward and of DropBP forwards (mean over sampled drop sets) — a dropped branch's part
of the graph is released as soon as its output is detached; on CUDA also
`torch.cuda.max_memory_allocated` per step. The process's peak RSS is printed for scale
(it is set by loading the model, the same for both).

The data is random token ids (the step time does not depend on their values). Results go
to stdout and, as JSON, to `--out` (default `benchmarks/results/dropbp.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path


def build(args):
    """(setup, batch, optimizer, device) for the benchmark, through the library's training path."""
    import torch

    from suntool.artifact import open_artifact
    from suntool.train.config import FinetuneConfig
    from suntool.train.data import Example, collate
    from suntool.train.distributed import setup_distributed
    from suntool.train.methods import build_method

    torch.manual_seed(0)
    dist = setup_distributed(args.device)
    config = FinetuneConfig(artifact=args.model, data="unused.jsonl", out="unused-out", method=args.method,
                            dropbp=args.p, lora=args.lora, bf16=args.bf16, device=args.device, seed=0).validate()
    ref = open_artifact(args.model)
    setup = build_method(config, ref, dist)
    vocab = int(ref.prefill_config.get("vocab_size") or 32000)
    generator = torch.Generator().manual_seed(0)
    examples = [
        Example(tuple(torch.randint(10, vocab, (args.prompt_len,), generator=generator).tolist()),
                tuple(torch.randint(10, vocab, (args.completion_len,), generator=generator).tolist()), i + 1)
        for i in range(args.batch_size)
    ]
    batch = collate(examples, pad_id=0).to(dist.device)
    params = setup.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-5, foreach=False)
    return setup, batch, optimizer, dist.device, config


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def one_step(setup, batch, optimizer, device, config, *, dropped) -> tuple[float, float]:
    """One optimizer step with the given drop set; (forward seconds, backward+update seconds)."""
    import torch

    from suntool.train.loop import autocast

    setup.dropbp.set_dropped(dropped)
    _sync(device)
    start = time.perf_counter()
    with autocast(config, device):
        loss, count = setup.loss_sum(batch)
    _sync(device)
    middle = time.perf_counter()
    if loss.requires_grad:
        (loss / count).backward()
    torch.nn.utils.clip_grad_norm_(setup.trainable_parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return middle - start, time.perf_counter() - middle


def calibrate(setup, batch, config, device) -> list[float]:
    from suntool.train.data import Batch
    from suntool.train.distributed import DistInfo
    from suntool.train.dropbp import CALIBRATION_EXAMPLES
    from suntool.train.loop import _calibrate_dropbp

    probe = Batch(*(t[:CALIBRATION_EXAMPLES] for t in (batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                                     batch.completion_mask)))
    return _calibrate_dropbp(setup, probe, config, DistInfo(0, 1, 0, device))


def measure(args) -> dict:
    import torch

    setup, batch, optimizer, device, config = build(args)
    dropbp = setup.dropbp
    rates = calibrate(setup, batch, config, device)
    timings = {"plain": [], "dropbp": []}
    for index in range(args.warmup + args.pairs):
        for variant in ("plain", "dropbp"):
            dropped = dropbp.sample(index) if variant == "dropbp" else frozenset()
            forward, backward = one_step(setup, batch, optimizer, device, config, dropped=dropped)
            if index >= args.warmup:
                timings[variant].append((forward, backward))
    result = {}
    for variant, rows in timings.items():
        result[variant] = {
            "step_s": statistics.median(f + b for f, b in rows),
            "forward_s": statistics.median(f for f, _ in rows),
            "backward_update_s": statistics.median(b for _, b in rows),
            "steps": len(rows),
        }
    memory_result = None if args.no_memory else memory(setup, batch, optimizer, device, config)
    dropbp.kept_flops = dropbp.total_flops = 0.0
    for index in range(2000):
        dropbp.sample(index)
    return {
        "timings": result,
        "memory_bytes": memory_result,
        "ratio_step": result["dropbp"]["step_s"] / result["plain"]["step_s"],
        "ratio_backward_update": result["dropbp"]["backward_update_s"] / result["plain"]["backward_update_s"],
        "rates": rates,
        "expected_kept_fraction": dropbp.expected_kept_fraction,
        "realised_kept_fraction_2000_draws": dropbp.realised_kept_fraction,
        "branches": len(dropbp.branches),
        "trainable_parameters": sum(p.numel() for p in setup.trainable_parameters()),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }


def activation_bytes(setup, batch, optimizer, device, config, *, dropped) -> dict:
    """Memory of one step with the given drop set.

    `saved`: bytes of the activations autograd still holds for backward at the end of the
    forward (every tensor packed by `saved_tensors_hooks` that is still alive, parameters
    excluded, each storage once) — what a dropped branch frees, since detaching its output
    releases its part of the graph. `cuda_peak`: `max_memory_allocated` over the step (CUDA only).
    """
    import weakref

    import torch

    from suntool.train.loop import autocast

    models = [setup.trainable] + ([setup.frozen] if setup.frozen is not None else [])
    weights = {p.untyped_storage().data_ptr() for m in models for p in m.parameters()}
    packed = []

    def pack(tensor):
        packed.append(weakref.ref(tensor))
        return tensor

    setup.dropbp.set_dropped(dropped)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(config, device):
        loss, count = setup.loss_sum(batch)
    alive = {}
    for ref in packed:
        tensor = ref()
        if tensor is not None:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                alive[storage.data_ptr()] = storage.nbytes()
    if loss.requires_grad:
        (loss / count).backward()
    optimizer.zero_grad(set_to_none=True)
    result = {"saved": sum(alive.values())}
    if device.type == "cuda":
        torch.cuda.synchronize()
        result["cuda_peak"] = int(torch.cuda.max_memory_allocated())
    return result


def memory(setup, batch, optimizer, device, config, draws: int = 6) -> dict:
    """Activation memory of plain steps vs DropBP steps (mean over `draws` sampled drop sets)."""
    plain = activation_bytes(setup, batch, optimizer, device, config, dropped=frozenset())
    dropped = [activation_bytes(setup, batch, optimizer, device, config, dropped=setup.dropbp.sample(10_000 + i))
               for i in range(draws)]
    result = {"saved_activations_plain": plain["saved"],
              "saved_activations_dropbp_mean": sum(d["saved"] for d in dropped) / draws}
    if "cuda_peak" in plain:
        result["cuda_peak_plain"] = plain["cuda_peak"]
        result["cuda_peak_dropbp_max"] = max(d["cuda_peak"] for d in dropped)
    return result


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="HF dir, built-in name or split artifact")
    parser.add_argument("--method", default="full", choices=("full", "sun", "prefillshare"))
    parser.add_argument("--p", type=float, default=0.5, help="DropBP target drop rate")
    parser.add_argument("--lora", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--completion-len", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each variant")
    parser.add_argument("--pairs", type=int, default=8, help="timed steps of each variant")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--no-memory", action="store_true", help="skip the activation-memory measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dropbp.json"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from suntool.commands._ui import quiet_transformers

    args = parse(argv)
    quiet_transformers()
    started = time.time()
    result = measure(args)
    result["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    result["wall_s"] = round(time.time() - started, 1)
    t = result["timings"]
    print(f"model {args.model}  method {args.method}  batch {args.batch_size} x "
          f"({args.prompt_len}+{args.completion_len}) tokens  DropBP p={args.p}  device {result['device']}")
    print(f"  plain   step {t['plain']['step_s'] * 1000:8.1f} ms  (forward {t['plain']['forward_s'] * 1000:.1f}, "
          f"backward+update {t['plain']['backward_update_s'] * 1000:.1f})")
    print(f"  DropBP  step {t['dropbp']['step_s'] * 1000:8.1f} ms  (forward {t['dropbp']['forward_s'] * 1000:.1f}, "
          f"backward+update {t['dropbp']['backward_update_s'] * 1000:.1f})")
    print(f"  ratio DropBP/plain: step {result['ratio_step']:.3f}, "
          f"backward+update {result['ratio_backward_update']:.3f}"
          f"   kept backward FLOPs {result['realised_kept_fraction_2000_draws']:.3f} (budget {1 - args.p:.2f})")
    memory_result = result["memory_bytes"]
    if memory_result:
        print(f"  activations held for backward: plain {memory_result['saved_activations_plain'] / 2**20:.0f} MiB, "
              f"DropBP {memory_result['saved_activations_dropbp_mean'] / 2**20:.0f} MiB (mean)")
        if "cuda_peak_plain" in memory_result:
            print(f"  CUDA peak: plain {memory_result['cuda_peak_plain'] / 2**20:.0f} MiB, "
                  f"DropBP {memory_result['cuda_peak_dropbp_max'] / 2**20:.0f} MiB (max)")
    print(f"  peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"  wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
