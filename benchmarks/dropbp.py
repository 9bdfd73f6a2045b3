"""DropBP vs plain backward at several drop rates, with and without LoRA: step time as a ratio in one run, memory.

    .venv/bin/python benchmarks/dropbp.py [--model smollm2-135m] [--method full] [--rate 0.5 --rate 0.75 --rate 0.875]
        [--lora 0 --lora 16] [--batch-size 4] [--prompt-len 64] [--completion-len 64] [--pairs 8] [--out FILE.json]

For each LoRA setting (`--lora 0`: all weights trained; `--lora R`: a rank-R LoRA adapter on every
linear of the trained model, the QLoRA-style setting of the DropBP paper without the 4-bit base),
one process loads the model through the library's own training path
(`suntool.train.methods.build_method`: the same loss, the same DropBP drop layers), measures the
branch sensitivities once as the training loop does after 10% of its steps (two examples), and
allocates DropBP's rates for every target rate from them (greedy, under the (1-p) FLOPs budget).
It then runs rounds of optimizer steps (forward + backward + clip + AdamW) on the same fixed batch:
in each round one plain step, then one DropBP step per target rate, so drift of a shared machine
hits every variant alike. A plain step is the same module with no branch dropped. Reported per
rate: median step time and the ratio DropBP/plain, forward and backward+update medians, and the
realised kept-FLOPs fraction.

Memory, per variant:
- `saved_activations`: bytes of the activations autograd holds for backward at the end of the
  forward (a dropped branch's part of the graph is released as soon as its output is detached);
  for DropBP the mean over sampled drop sets;
- `training_state`: bytes of the weights, of the gradients of the trainable parameters and of
  AdamW's two moments (the same for every rate: gradients are allocated for every trainable
  parameter over a run);
- `peak_estimate` = training_state + saved_activations (on CPU there is no allocator peak counter);
- on CUDA also `torch.cuda.max_memory_allocated` per step (`cuda_peak`).
The process's peak RSS is printed for scale (set by loading the model).

The data is random token ids (the step time does not depend on their values). Use fp32 on CPUs
without native bf16 (AVX2-only machines emulate bf16, and it is slower there). Results go to stdout
and, as JSON, to `--out` (default `benchmarks/results/dropbp.json`), rewritten after each LoRA
setting so a partial run leaves its finished part.
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


def build(args, lora: int):
    """(setup, batch, optimizer, device, config) for one LoRA setting, through the library's training path."""
    import torch

    from suntool.artifact import open_artifact
    from suntool.train.config import FinetuneConfig
    from suntool.train.data import Example, collate
    from suntool.train.distributed import setup_distributed
    from suntool.train.methods import build_method

    torch.manual_seed(0)
    dist = setup_distributed(args.device)
    config = FinetuneConfig(artifact=args.model, data="unused.jsonl", out="unused-out", method=args.method,
                            dropbp=max(args.rates), lora=lora, bf16=args.bf16, device=args.device, seed=0).validate()
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
    optimizer = torch.optim.AdamW(setup.trainable_parameters(), lr=1e-5, foreach=False)
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
    """The branch sensitivities, measured as the training loop measures them (once; they do not depend on p)."""
    from suntool.train.data import Batch
    from suntool.train.distributed import DistInfo
    from suntool.train.dropbp import CALIBRATION_EXAMPLES
    from suntool.train.loop import _calibrate_dropbp

    probe = Batch(*(t[:CALIBRATION_EXAMPLES] for t in (batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                                     batch.completion_mask)))
    _calibrate_dropbp(setup, probe, config, DistInfo(0, 1, 0, device))
    return list(setup.dropbp.sensitivities)


def rates_for(dropbp, sensitivities: list[float], target: float) -> list[float]:
    """Point `dropbp` at `target` with the rates the loop would allocate from `sensitivities`."""
    from suntool.train.dropbp import allocate_rates

    dropbp.target = target
    dropbp.rates = allocate_rates(sensitivities, dropbp.flops, target)
    return dropbp.rates


def realised_kept_fraction(dropbp, draws: int = 2000) -> float:
    dropbp.kept_flops = dropbp.total_flops = 0.0
    for index in range(draws):
        dropbp.sample(100_000 + index)
    return dropbp.realised_kept_fraction


def _median(rows: list[tuple[float, float]]) -> dict:
    return {"step_s": statistics.median(f + b for f, b in rows), "forward_s": statistics.median(f for f, _ in rows),
            "backward_update_s": statistics.median(b for _, b in rows), "steps": len(rows)}


def measure(args, lora: int) -> dict:
    """Everything for one LoRA setting: plain and every rate, interleaved in rounds."""
    import torch

    setup, batch, optimizer, device, config = build(args, lora)
    dropbp = setup.dropbp
    sensitivities = calibrate(setup, batch, config, device)
    rates = {p: list(rates_for(dropbp, sensitivities, p)) for p in args.rates}
    timings: dict[str, list] = {"plain": [], **{str(p): [] for p in args.rates}}
    for index in range(args.warmup + args.pairs):
        for variant in timings:
            if variant == "plain":
                dropped = frozenset()
            else:
                rates_for(dropbp, sensitivities, float(variant))
                dropped = dropbp.sample(index)
            forward, backward = one_step(setup, batch, optimizer, device, config, dropped=dropped)
            if index >= args.warmup:
                timings[variant].append((forward, backward))
    plain = _median(timings["plain"])
    state = training_state_bytes(setup)
    plain_memory = None if args.no_memory else memory(setup, batch, optimizer, device, config, None)
    per_rate = {}
    for p in args.rates:
        rates_for(dropbp, sensitivities, p)
        timing = _median(timings[str(p)])
        entry = {
            "timings": timing,
            "ratio_step": timing["step_s"] / plain["step_s"],
            "ratio_forward": timing["forward_s"] / plain["forward_s"],
            "ratio_backward_update": timing["backward_update_s"] / plain["backward_update_s"],
            "rates": rates[p],
            "expected_kept_fraction": dropbp.expected_kept_fraction,
            "realised_kept_fraction_2000_draws": realised_kept_fraction(dropbp),
        }
        if plain_memory is not None:
            mem = memory(setup, batch, optimizer, device, config, dropbp)
            entry["memory_bytes"] = mem
            entry["ratio_saved_activations"] = mem["saved_activations"] / plain_memory["saved_activations"]
            entry["ratio_peak_estimate"] = (state + mem["saved_activations"]) / (
                state + plain_memory["saved_activations"])
        per_rate[str(p)] = entry
    return {
        "lora": lora,
        "plain": {"timings": plain, "memory_bytes": plain_memory},
        "training_state_bytes": state,
        "rates": per_rate,
        "sensitivities": sensitivities,
        "branches": len(dropbp.branches),
        "trainable_parameters": sum(p.numel() for p in setup.trainable_parameters()),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }


def training_state_bytes(setup) -> int:
    """Weights (every model of the setup) + gradients and AdamW's two moments of the trainable parameters."""
    models = [setup.trainable] + ([setup.frozen] if setup.frozen is not None else [])
    weights = {p.untyped_storage().data_ptr(): p.numel() * p.element_size() for m in models for p in m.parameters()}
    trainable = sum(p.numel() * p.element_size() for p in setup.trainable_parameters())
    return sum(weights.values()) + 3 * trainable


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


def memory(setup, batch, optimizer, device, config, dropbp, draws: int = 6) -> dict:
    """Activation memory of plain steps (`dropbp=None`) or of DropBP steps (mean over `draws` drop sets)."""
    sets = [frozenset()] if dropbp is None else [dropbp.sample(10_000 + i) for i in range(draws)]
    rows = [activation_bytes(setup, batch, optimizer, device, config, dropped=d) for d in sets]
    result = {"saved_activations": sum(r["saved"] for r in rows) / len(rows)}
    if "cuda_peak" in rows[0]:
        result["cuda_peak_max"] = max(r["cuda_peak"] for r in rows)
    return result


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="HF dir, built-in name or split artifact")
    parser.add_argument("--method", default="full", choices=("full", "sun", "prefillshare"))
    parser.add_argument("--rate", dest="rates", type=float, action="append",
                        help="DropBP target drop rate (repeatable; default 0.5, 0.75, 0.875)")
    parser.add_argument("--lora", dest="loras", type=int, action="append",
                        help="0: all weights; R: a rank-R LoRA adapter (repeatable; default 0 and 16)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--completion-len", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    parser.add_argument("--pairs", type=int, default=8, help="timed rounds (one step of every variant each)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--no-memory", action="store_true", help="skip the activation-memory measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dropbp.json"))
    args = parser.parse_args(argv)
    args.rates = args.rates or [0.5, 0.75, 0.875]
    args.loras = args.loras if args.loras is not None else [0, 16]
    if any(not 0 < p <= 0.9 for p in args.rates):
        parser.error("--rate must be in (0, 0.9]")
    return args


def report_lines(args, run: dict) -> list[str]:
    t = run["plain"]["timings"]
    setting = f"LoRA r={run['lora']}" if run["lora"] else "all weights"
    lines = [f"model {args.model}  method {args.method}  {setting}  batch {args.batch_size} x "
             f"({args.prompt_len}+{args.completion_len}) tokens  device {run['device']}",
             f"  plain      step {t['step_s'] * 1000:8.1f} ms  (forward {t['forward_s'] * 1000:.1f}, "
             f"backward+update {t['backward_update_s'] * 1000:.1f})"]
    for p, entry in run["rates"].items():
        d = entry["timings"]
        memory_text = ""
        if "memory_bytes" in entry:
            memory_text = (f"  activations x{entry['ratio_saved_activations']:.2f}, "
                           f"peak est. x{entry['ratio_peak_estimate']:.2f}")
        lines.append(f"  DropBP {float(p):.3f} step {d['step_s'] * 1000:8.1f} ms  ratio {entry['ratio_step']:.3f} "
                     f"(backward+update {entry['ratio_backward_update']:.3f}; kept FLOPs "
                     f"{entry['realised_kept_fraction_2000_draws']:.3f}){memory_text}")
    return lines


def main(argv=None) -> int:
    from suntool.atomic import atomic_write_text
    from suntool.commands._ui import quiet_transformers

    args = parse(argv)
    quiet_transformers()
    started = time.time()
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
        "runs": [],
    }
    for lora in args.loras:
        run = measure(args, lora)
        result["runs"].append(run)
        result["machine"]["loadavg_end"] = os.getloadavg()
        result["wall_s"] = round(time.time() - started, 1)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        print("\n".join(report_lines(args, run)), flush=True)
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"  peak RSS of this process: {result['peak_rss_mib']:.0f} MiB\n  wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
