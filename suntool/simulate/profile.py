"""A measured cost profile: decode step time by batch size and context, prefill time by tokens.

`suntool bench --profile` writes it (`suntool.bench.profile`); `suntool simulate --profile`
reads it with `load_profile(path)`, which validates every field and raises a one-line
`SuntoolError` naming what is wrong. The JSON (format "suntool-profile", version 1):

    {"format": "suntool-profile", "version": 1,
     "decode": {"batch_sizes": [1, 2, 4, ...], "contexts": [32, 128, ...],
                "step_seconds": [[...one per context...], ...one row per batch size...]},
     "prefill": {"points": [{"batch": 1, "prompt_tokens": 64, "seconds": 0.05}, ...]},
     "engine": {"max_batch": 64, "max_prefill_tokens": 4096, "torch_threads": 1, "kv_capacity_tokens": 65536,
                "mixed_steps": true},
     "host": {"cores": 2, "thread_speedup": 1.6, "pair_speed": 0.55, "cpu": "...", "flags": [...]},
     "source": {...}}

`host.thread_speedup` is how much faster a forward runs on every core than on one
(measured with `--torch-threads 1`); `host.pair_speed` (optional, in (0, 1]) is the speed of
each of two forwards running at once on their own engine threads, relative to one alone
(measured with two copies of the model decoding together). The simulator uses both to share
the cores between busy engine threads (`suntool.simulate.sim.thread_share`).
`engine.mixed_steps` (optional, default false: profiles written before it existed) says the
engine ran prompts on its decode thread, so its forwards ran one at a time: the simulator then
runs the local host's forwards serially instead of sharing the cores.

`Profile.decode_step(batch, context)` interpolates piecewise-linearly in both batch size
and context (and extrapolates linearly from the last two points beyond the grid);
`Profile.prefill(tokens)` interpolates over the tokens of a prefill forward (the engine
packs prompts without padding, so a batch of B prompts of P tokens is B·P tokens).
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

from suntool.errors import SuntoolError

FORMAT = "suntool-profile"
VERSION = 1
REMEDY = "re-measure it with `suntool bench --local ART --profile PATH`"


def interp(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear y(x) through sorted `xs`; linear extrapolation from the end segments."""
    if len(xs) == 1:
        return ys[0] * (x / xs[0]) if x > xs[0] else ys[0]
    i = min(max(bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    y = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return max(y, min(ys) * 0.5) if x < xs[0] else y


@dataclass(frozen=True)
class Profile:
    batch_sizes: tuple[int, ...]
    contexts: tuple[int, ...]
    step_seconds: tuple[tuple[float, ...], ...]  # [batch][context]
    prefill_tokens: tuple[int, ...]  # tokens per prefill forward, sorted
    prefill_seconds: tuple[float, ...]
    max_batch: int = 64
    max_prefill_tokens: int = 4096
    torch_threads: int = 1
    cores: int = 1
    thread_speedup: float = 1.0
    pair_speed: float | None = None
    mixed_steps: bool = False  # the engine ran prompts on its decode thread (one forward at a time)
    kv_capacity_tokens: int | None = None
    source: str = ""

    def decode_step(self, batch: int, context: float) -> float:
        """Seconds of one decode forward over `batch` sequences whose mean context is `context`."""
        per_context = [interp(list(self.batch_sizes), [row[c] for row in self.step_seconds], batch)
                       for c in range(len(self.contexts))]
        return max(interp(list(self.contexts), per_context, context), 1e-6)

    def prefill(self, tokens: int) -> float:
        """Seconds of one prefill forward over `tokens` prompt tokens (packed)."""
        return max(interp(list(self.prefill_tokens), list(self.prefill_seconds), tokens), 1e-6)


def _fail(path: Path | str, what: str) -> SuntoolError:
    return SuntoolError(f"profile {path}: {what}; {REMEDY}")


def _numbers(path, name: str, value, *, integer: bool, increasing: bool) -> list:
    if not isinstance(value, list) or not value:
        raise _fail(path, f"{name} is missing or empty")
    kind = int if integer else (int, float)
    for v in value:
        if isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v) or v <= 0:
            raise _fail(path, f"{name} must hold positive {'integers' if integer else 'numbers'}, found {v!r}")
    if increasing and any(b <= a for a, b in zip(value, value[1:], strict=False)):
        raise _fail(path, f"{name} must be strictly increasing, got {value}")
    return value


def parse_profile(data: dict, path: Path | str = "<profile>") -> Profile:
    """Validate a profile dict (see the module docstring) into a `Profile`."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _fail(path, f"not a suntool profile (format must be {FORMAT!r})")
    if data.get("version") != VERSION:
        raise _fail(path, f"version {data.get('version')!r} is not supported (this suntool reads {VERSION})")
    decode, prefill = data.get("decode"), data.get("prefill")
    if not isinstance(decode, dict):
        raise _fail(path, "decode is missing")
    batches = _numbers(path, "decode.batch_sizes", decode.get("batch_sizes"), integer=True, increasing=True)
    contexts = _numbers(path, "decode.contexts", decode.get("contexts"), integer=True, increasing=True)
    rows = decode.get("step_seconds")
    if not isinstance(rows, list) or len(rows) != len(batches):
        raise _fail(path, f"decode.step_seconds needs one row per batch size ({len(batches)}: {batches}), "
                          f"found {len(rows) if isinstance(rows, list) else 'none'}")
    for batch, row in zip(batches, rows, strict=True):
        if not isinstance(row, list) or len(row) != len(contexts):
            raise _fail(path, f"decode.step_seconds row of batch {batch} needs one time per context {contexts}")
        _numbers(path, f"decode.step_seconds (batch {batch})", row, integer=False, increasing=False)
    if not isinstance(prefill, dict) or not isinstance(prefill.get("points"), list) or not prefill["points"]:
        raise _fail(path, "prefill.points is missing or empty")
    by_tokens: dict[int, list[float]] = {}
    for point in prefill["points"]:
        if not isinstance(point, dict) or not {"batch", "prompt_tokens", "seconds"} <= set(point):
            raise _fail(path, f"each prefill point needs batch, prompt_tokens and seconds, found {point!r}")
        b, t, s = _numbers(path, "a prefill point", [point["batch"], point["prompt_tokens"], point["seconds"]],
                           integer=False, increasing=False)
        by_tokens.setdefault(int(b * t), []).append(float(s))
    tokens = sorted(by_tokens)
    engine, host = data.get("engine") or {}, data.get("host") or {}
    kv = engine.get("kv_capacity_tokens")
    speedup = host.get("thread_speedup", 1.0)
    if isinstance(speedup, bool) or not isinstance(speedup, (int, float)) or not 0.5 <= speedup <= 1024:
        raise _fail(path, f"host.thread_speedup must be a number >= 0.5, got {speedup!r}")
    pair = host.get("pair_speed")
    if pair is not None and (isinstance(pair, bool) or not isinstance(pair, (int, float)) or not 0 < pair <= 1.5):
        raise _fail(path, f"host.pair_speed must be a number in (0, 1.5], got {pair!r}")
    mixed = engine.get("mixed_steps", False)
    if not isinstance(mixed, bool):
        raise _fail(path, f"engine.mixed_steps must be true or false, got {mixed!r}")
    return Profile(
        batch_sizes=tuple(batches), contexts=tuple(contexts),
        step_seconds=tuple(tuple(float(x) for x in row) for row in rows),
        prefill_tokens=tuple(tokens), prefill_seconds=tuple(sum(by_tokens[t]) / len(by_tokens[t]) for t in tokens),
        max_batch=int(engine.get("max_batch", 64)), max_prefill_tokens=int(engine.get("max_prefill_tokens", 4096)),
        torch_threads=int(engine.get("torch_threads", 1)), cores=int(host.get("cores", 1)),
        thread_speedup=float(speedup), pair_speed=None if pair is None else float(pair), mixed_steps=mixed,
        kv_capacity_tokens=int(kv) if kv else None, source=str(path),
    )


def load_profile(path: Path | str) -> Profile:
    """Read and validate a profile JSON; every problem is a one-line SuntoolError."""
    path = Path(path)
    if not path.is_file():
        raise SuntoolError(f"profile {path} does not exist; write one with "
                           f"`suntool bench --local ART --profile {path}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(path, f"not readable JSON ({err.__class__.__name__}: {err})") from None
    return parse_profile(data, path)
