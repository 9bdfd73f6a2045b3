"""`suntool bench --profile`: measure the local engine's step costs into a simulator profile.

`measure_profile(ProfileConfig(...), say)` loads the artifacts into the local engine
through its public API only (`Engine.from_artifacts`, `EngineConfig`, `submit`,
`stats`, `close`) and measures:

- decode: for every batch size B and context L of the grid, B requests of L random
  prompt tokens and `decode_steps` output tokens (`ignore_eos`) submitted together; the
  step time is the median gap between token events while all B sequences decode together
  (from the last sequence's first token to the first sequence's last token);
- prefill: for every prompt length P (and a few batched points), one (or B) request(s)
  of P tokens and two output tokens submitted together, as a burst reaches the engine;
  from the submit to the last first token, less one decode step (the gap to the second
  token in the same run), is the prefill time of P (or B·P packed) tokens.

A decode point is the median of its step gaps pooled over `repeats` runs; a prefill point the
median of `repeats` runs. Then a second engine with `torch_threads=1` times a few decode steps again: the ratio is
`host.thread_speedup` (a forward alone uses every core; busy threads split them). Last, an
engine with two copies of the model (`share=False`, two decode workers) decodes the same
batches on one copy, then on both at once: the ratio of the two steps is `host.pair_speed`, what two busy
forwards really get of the machine (cores sharing memory bandwidth, or SMT siblings, give
less than the thread counts say). The profile (format in `suntool.simulate.profile`)
also records the engine settings the costs were measured under (max batch, prefill
token budget, torch threads per worker, KV capacity) and the host (cores, CPU flags),
and is written atomically. `suntool simulate --profile PATH` reads it.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from suntool.errors import SuntoolError

Say = Callable[[str], None]
NAME = "profiled"
PAIR = "profiled-twin"  # the second copy of the model, for `host.pair_speed`
BLOCKER_TOKENS = 64


@dataclass(frozen=True)
class ProfileConfig:
    artifacts: tuple[str, ...]
    out: Path
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    contexts: tuple[int, ...] = (32, 128, 384)
    prefill_tokens: tuple[int, ...] = (16, 64, 256, 512)
    prefill_batches: tuple[tuple[int, int], ...] = ((4, 64), (16, 64), (8, 256))  # (batch, prompt tokens)
    decode_steps: int = 10
    repeats: int = 3
    decode_workers: int = 1
    torch_threads: int | None = None
    dtype: str | None = None
    serve_args: dict = field(default_factory=dict)  # more EngineConfig fields

    def validate(self) -> None:
        if not self.artifacts:
            raise SuntoolError("--profile measures the local engine: give --local ART (one artifact is enough)")
        for name, values in (("--profile-batches", self.batch_sizes), ("--profile-contexts", self.contexts),
                             ("prefill tokens", self.prefill_tokens)):
            if not values or any(v < 1 for v in values) or list(values) != sorted(set(values)):
                raise SuntoolError(f"{name} must be increasing positive integers, got {list(values)}")
        if self.decode_steps < 3 or self.repeats < 1:
            raise SuntoolError("decode steps must be at least 3 and repeats at least 1")


class _Recorder:
    """A sink per request: the time and token count of each event, and a done flag."""

    def __init__(self):
        self.times: list[tuple[float, int]] = []
        self.done = threading.Event()

    def __call__(self, event) -> None:
        if event.token_ids:
            self.times.append((time.perf_counter(), len(event.token_ids)))
        if event.finish_reason is not None:
            if event.finish_reason != "length":
                self.error = event.finish_reason
            self.done.set()


def _run(engine, prompts: list[list[int]], max_tokens: int, models: tuple[str, ...] = (NAME,)
         ) -> tuple[float, list[_Recorder]]:
    """Submit every prompt to every model in `models`; wait for all. Recorders in that order."""
    from suntool.serve.sequence import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    recorders = [_Recorder() for _ in models for _ in prompts]
    start = time.perf_counter()
    for index, recorder in enumerate(recorders):
        engine.submit(models[index // len(prompts)], prompts[index % len(prompts)], params, recorder)
    for recorder in recorders:
        if not recorder.done.wait(600):
            raise SuntoolError("a profiling request did not finish in 600 s; is the machine overloaded?")
        if getattr(recorder, "error", None):
            raise SuntoolError(f"a profiling request ended with {recorder.error!r} instead of its length")
    return start, recorders


def _prompts(rng: random.Random, count: int, length: int, vocab: int = 5000) -> list[list[int]]:
    low = min(100, vocab // 4)
    return [[rng.randrange(low, min(5000, vocab)) for _ in range(length)] for _ in range(count)]


def _blocked_run(engine, rng, prompts: list[list[int]], max_tokens: int, vocab: int,
                 models: tuple[str, ...] = (NAME,)):
    """Run `prompts` behind a blocker: a 64-token request (per model) that keeps the prefill worker busy
    while the batch is submitted, so the whole batch is queued when the worker looks and prefills as one
    batch (the profiling engine's prefill budget holds it) and starts decoding in the same step."""
    from suntool.serve.sequence import SamplingParams

    blockers = [_Recorder() for _ in models]
    blocker_prompt = _prompts(rng, 1, BLOCKER_TOKENS, vocab)[0]
    for model, blocker in zip(models, blockers, strict=True):
        engine.submit(model, blocker_prompt, SamplingParams(max_tokens=1, ignore_eos=True), blocker)
    _, recorders = _run(engine, prompts, max_tokens, models)
    for blocker in blockers:
        blocker.done.wait(600)
    return blockers, recorders


def _decode_step(engine, rng, batch: int, context: int, steps: int, vocab: int,
                 models: tuple[str, ...] = (NAME,), repeats: int = 1) -> float:
    """The median step of `batch` sequences decoding together on each model of `models` (all at once), over the
    step gaps of `repeats` runs pooled (one run's ~10 gaps move by ±15 % with what else the machine does)."""
    gaps = []
    for _ in range(repeats):
        gaps += _decode_gaps(engine, rng, batch, context, steps, vocab, models)
    return statistics.median(gaps)  # the median step: robust to a stall caused by other jobs on the machine


def _decode_gaps(engine, rng, batch: int, context: int, steps: int, vocab: int,
                 models: tuple[str, ...]) -> list[float]:
    _, recorders = _blocked_run(engine, rng, _prompts(rng, batch, context, vocab), steps, vocab, models)
    firsts = [r.times[0][0] for r in recorders]
    lasts = [r.times[-1][0] for r in recorders]
    t_a, t_b = max(firsts), min(lasts)
    gaps = []
    for m in range(len(models)):  # one sequence of each model, inside the window where all decode
        own = recorders[m * batch:(m + 1) * batch]
        first_done = min(own, key=lambda r: r.times[-1][0])
        window = [(t, n) for t, n in first_done.times if t_a <= t <= t_b]
        gaps += [(t1 - t0) / n1 for (t0, _), (t1, n1) in zip(window, window[1:], strict=False)]
    if not gaps:
        raise SuntoolError(f"batch {batch} never decoded together; raise the decode steps or lower --max-batch")
    return gaps


def _prefill_time(engine, rng, batch: int, tokens: int, vocab: int) -> float:
    """B prompts of `tokens` tokens and two output tokens each: from the submit to the last first token,
    less one decode step (the gap between first and second tokens, measured in the same run)."""
    start, recorders = _run(engine, _prompts(rng, batch, tokens, vocab), 2)
    last_first = max(r.times[0][0] for r in recorders)
    step = statistics.median((r.times[-1][0] - r.times[0][0]) / max(1, r.times[-1][1]) for r in recorders
                             if len(r.times) > 1) if any(len(r.times) > 1 for r in recorders) else 0.0
    return max(last_first - start - step, 1e-5)


def measure_profile(config: ProfileConfig, say: Say | None = None) -> dict:
    """Measure and write the profile; returns its dict (also written to `config.out`)."""
    import torch

    from suntool.serve.engine import keep_this_thread_serial

    config.validate()
    previous = keep_this_thread_serial()  # as `suntool serve` does: the engine's threads run as in the server
    try:
        return _measure(config, say or (lambda _m: None))
    finally:
        torch.set_num_threads(previous)


def _measure(config: ProfileConfig, say: Say) -> dict:
    from suntool.atomic import atomic_write_text
    from suntool.serve.engine import Engine, EngineConfig

    defaults = EngineConfig()
    budget = max(defaults.max_prefill_tokens, config.batch_sizes[-1] * config.contexts[-1])
    engine_config = EngineConfig(decode_workers=config.decode_workers, torch_threads=config.torch_threads,
                                 dtype=config.dtype, max_prefill_tokens=budget,
                                 max_batch=max(defaults.max_batch, config.batch_sizes[-1]), **config.serve_args)
    say(f"loading {config.artifacts[0]} into the local engine")
    from suntool.simulate.modelcfg import model_shape

    vocab = model_shape(config.artifacts[0]).vocab  # random prompt ids stay inside the vocabulary
    engine = Engine.from_artifacts([config.artifacts[0]], names=[NAME], config=engine_config)
    rng = random.Random(0)
    try:
        _run(engine, _prompts(rng, 2, 16, vocab), 4)  # warm-up
        grid = []
        for batch in config.batch_sizes:
            row = []
            for context in config.contexts:
                row.append(_decode_step(engine, rng, batch, context, config.decode_steps, vocab,
                                        repeats=config.repeats))
                say(f"decode batch {batch:>3} context {context:>5}: {row[-1] * 1e3:.1f} ms/step")
            grid.append(row)

        points = []
        shapes = [(1, p) for p in config.prefill_tokens] + list(config.prefill_batches)
        for batch, tokens in shapes:
            seconds = statistics.median(
                [_prefill_time(engine, rng, batch, tokens, vocab) for _ in range(config.repeats)])
            points.append({"batch": batch, "prompt_tokens": tokens, "seconds": seconds})
            say(f"prefill batch {batch:>3} × {tokens:>5} tokens: {seconds * 1e3:.1f} ms")
        stats = engine.stats()
        middle = len(config.contexts) // 2
        speedup_points = [(i, middle) for i in sorted({len(config.batch_sizes) // 2, len(config.batch_sizes) - 1})]
        all_cores = [grid[i][c] for i, c in speedup_points]
    finally:
        engine.close()
    speedup = 1.0
    cores = os.cpu_count() or 1
    if cores > 1 and config.torch_threads is None:
        say("measuring the same forwards on one thread (how busy engine threads share the cores)")
        from dataclasses import replace

        engine = Engine.from_artifacts([config.artifacts[0]], names=[NAME],
                                       config=replace(engine_config, torch_threads=1))
        try:
            _run(engine, _prompts(rng, 2, 16, vocab), 4)
            ratios = [_decode_step(engine, rng, config.batch_sizes[i], config.contexts[c], config.decode_steps,
                                   vocab) / t for (i, c), t in zip(speedup_points, all_cores, strict=True)]
        finally:
            engine.close()
        speedup = max(1.0, statistics.median(ratios))
        say(f"one thread is {speedup:.2f}x slower than {cores}")
    pair_speed = None
    if cores > 1:
        say("measuring two forwards at once (two copies of the model, each decoding on its own thread)")
        from dataclasses import replace

        engine = Engine.from_artifacts([config.artifacts[0]] * 2, names=[NAME, PAIR],
                                       config=replace(engine_config, share=False, decode_workers=2))
        try:
            _run(engine, _prompts(rng, 2, 16, vocab), 4, (NAME, PAIR))
            steps = 4 * config.decode_steps  # the two prefills end apart: enough steps that the decodes overlap
            speeds = []
            for i, c in speedup_points:  # alone and together on the same engine, one after the other
                shape = (engine, rng, config.batch_sizes[i], config.contexts[c], steps, vocab)
                speeds.append(_decode_step(*shape, (NAME,)) / _decode_step(*shape, (NAME, PAIR)))
        finally:
            engine.close()
        pair_speed = min(1.5, statistics.median(speeds))
        say(f"two forwards at once each run at {pair_speed:.2f} of one alone")
    profile = {
        "format": "suntool-profile", "version": 1,
        "decode": {"batch_sizes": list(config.batch_sizes), "contexts": list(config.contexts), "step_seconds": grid},
        "prefill": {"points": points},
        # what `suntool serve` runs with (the profiling engine only widens the prefill budget to batch the grid)
        "engine": {"max_batch": defaults.max_batch, "max_prefill_tokens": defaults.max_prefill_tokens,
                   # intra-op threads of each busy engine thread: the cores split between the decode workers
                   # (and the prefill thread, where prompts do not run on the decode threads)
                   "torch_threads": engine_config.torch_threads or max(1, cores // (
                       config.decode_workers + (0 if engine_config.mixed_steps else 1))),
                   "decode_workers": config.decode_workers, "dtype": config.dtype or "float32 (CPU default)",
                   "mixed_steps": engine_config.mixed_steps,
                   "kv_capacity_tokens": stats.kv_blocks_total * engine_config.block_size},
        "host": {"cores": cores, "thread_speedup": speedup, "pair_speed": pair_speed, "cpu": _cpu_name(),
                 "flags": _cpu_flags(), "machine": platform.machine()},
        "source": {"artifact": str(config.artifacts[0]), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "decode_steps": config.decode_steps, "repeats": config.repeats,
                   "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
    }
    from suntool.simulate.profile import parse_profile

    parse_profile(profile, config.out)  # what we write, we can read
    atomic_write_text(Path(config.out), json.dumps(profile, indent=1) + "\n")
    return profile


def _cpu_info() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def _cpu_name() -> str:
    return _cpu_info().get("model name", platform.processor() or "unknown")


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
    flags = set(_cpu_info().get("flags", "").split())
    return [f for f in wanted if f in flags]
