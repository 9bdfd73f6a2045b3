"""What the simulated cluster is asked to do: arrivals, model popularity, prompt and output lengths.

`make_requests(WorkloadConfig(...))` returns `SimRequest`s, reproducible from `seed`:

- models: `models` task models; model i gets a share ∝ 1/(i+1)^alpha (Zipf; alpha 0 is
  uniform), so model 0 is the most popular;
- arrivals: `poisson` (exponential gaps at `rate`/s), `bursty` (gamma gaps with
  coefficient of variation `burst_cv` > 1, same mean), or everything at t=0 when
  `rate` is inf;
- lengths: fixed `prompt_len` / `output_len` (default 128), or drawn from `lengths` — a JSONL file whose
  records give `prompt_tokens` and `output_tokens` (or `prompt` and `completion` text,
  counted as the benchmark does at 3.5 characters a token), or `tasks`, the synthetic
  task prompts `suntool bench` sends (model i gets task i mod 3); an `output_len` given
  with `lengths` fixes every output (as `suntool bench --output-len` does);
- shared prefixes: with `prefix_len` > 0 every prompt starts with one of `prefixes`
  shared contexts (a document several agents read; chosen uniformly), which a prefix
  cache can reuse — across models only where the prefill half is shared (PrefillShare).

`requests_from_records` builds them from explicit (arrival, model, prompt, output) tuples,
which is how `benchmarks/simulate_validate.py` replays the exact requests of a bench run.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from suntool.errors import SuntoolError

CHARS_PER_TOKEN = 3.5
DEFAULT_OUTPUT = 128


@dataclass(frozen=True)
class SimRequest:
    id: int
    arrival: float
    model: int
    prompt_tokens: int  # including the shared prefix
    output_tokens: int
    prefix_id: int | None = None
    prefix_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens already cached when it arrives (a replayed benchmark's warm server)


@dataclass(frozen=True)
class WorkloadConfig:
    models: int = 8
    alpha: float = 1.0
    rate: float = 4.0
    requests: int = 500
    arrivals: str = "poisson"  # "poisson" | "bursty"
    burst_cv: float = 3.0
    prompt_len: int = 512
    output_len: int | None = None  # None: 128, or from `lengths`; a number overrides `lengths`' outputs
    lengths: str | None = None  # JSONL path or "tasks"
    prefix_len: int = 0
    prefixes: int = 1
    seed: int = 0

    def validate(self) -> None:
        if self.models < 1:
            raise SuntoolError(f"--models must be at least 1, got {self.models}")
        if not self.alpha >= 0 or math.isnan(self.alpha):
            raise SuntoolError(f"--zipf (alpha) must be >= 0 (0 is uniform popularity), got {self.alpha}")
        if not self.rate > 0 or math.isnan(self.rate):
            raise SuntoolError(f"--rate must be positive requests/s (or inf for all at once), got {self.rate}")
        if self.requests < 1:
            raise SuntoolError(f"--requests must be at least 1, got {self.requests}")
        if self.arrivals not in ("poisson", "bursty"):
            raise SuntoolError(f"--arrivals must be poisson or bursty, got {self.arrivals!r}")
        if self.arrivals == "bursty" and not self.burst_cv > 0:
            raise SuntoolError(f"--burst-cv must be positive, got {self.burst_cv}")
        if self.prompt_len < 1 or (self.output_len is not None and self.output_len < 1):
            raise SuntoolError("--prompt-len and --output-len must be at least 1 token")
        if self.prefix_len < 0 or self.prefixes < 1:
            raise SuntoolError("--prefix-len must be >= 0 and --prefixes >= 1")

    def weights(self) -> list[float]:
        raw = [1.0 / (i + 1) ** self.alpha for i in range(self.models)]
        return [w / sum(raw) for w in raw]


def _read_lengths(path: Path) -> list[tuple[int, int]]:
    if not path.is_file():
        raise SuntoolError(f"--lengths {path} does not exist; give a JSONL file or 'tasks'")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if "prompt_tokens" in record:
                pair = (int(record["prompt_tokens"]), int(record["output_tokens"]))
            else:
                pair = (math.ceil(len(record["prompt"]) / CHARS_PER_TOKEN),
                        math.ceil(len(record["completion"]) / CHARS_PER_TOKEN))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise SuntoolError(f"{path}:{number}: want prompt_tokens and output_tokens (or prompt and "
                               "completion text)") from None
        if min(pair) < 1:
            raise SuntoolError(f"{path}:{number}: lengths must be at least 1 token")
        pairs.append(pair)
    if not pairs:
        raise SuntoolError(f"--lengths {path} holds no records")
    return pairs


def _task_lengths(model: int, count: int, seed: int) -> list[tuple[int, int]]:
    from suntool.evals.tasks import TASKS

    tasks = list(TASKS.values())
    records = tasks[model % len(tasks)].generate(count, seed + model)
    return [(math.ceil(len(r["prompt"]) / CHARS_PER_TOKEN), max(8, math.ceil(len(r["completion"]) / CHARS_PER_TOKEN)))
            for r in records]


def _gaps(config: WorkloadConfig, rng: random.Random):
    while True:
        if math.isinf(config.rate):
            yield 0.0
        elif config.arrivals == "poisson":
            yield rng.expovariate(config.rate)
        else:
            shape = 1.0 / config.burst_cv**2
            yield rng.gammavariate(shape, 1.0 / (shape * config.rate))


def make_requests(config: WorkloadConfig) -> list[SimRequest]:
    """`config.requests` requests following the workload (see the module docstring)."""
    config.validate()
    rng = random.Random(config.seed)
    choice = rng.choices(range(config.models), weights=config.weights(), k=config.requests)
    pools: dict[int, list[tuple[int, int]]] = {}
    if config.lengths == "tasks":
        for m in set(choice):
            pools[m] = _task_lengths(m, choice.count(m), config.seed)
    elif config.lengths:
        table = _read_lengths(Path(config.lengths))
        for m in set(choice):
            pools[m] = [rng.choice(table) for _ in range(choice.count(m))]
    used = dict.fromkeys(pools, 0)
    t, out, gaps = 0.0, [], _gaps(config, rng)
    for i, m in enumerate(choice):
        t += next(gaps)
        if pools:
            prompt, output = pools[m][used[m]]
            used[m] += 1
            output = config.output_len or output
        else:
            prompt, output = config.prompt_len, config.output_len or DEFAULT_OUTPUT
        prefix = rng.randrange(config.prefixes) if config.prefix_len else None
        out.append(SimRequest(id=i, arrival=t, model=m, prompt_tokens=prompt + config.prefix_len,
                              output_tokens=output, prefix_id=prefix, prefix_tokens=config.prefix_len))
    return out


def requests_from_records(records: list[tuple]) -> list[SimRequest]:
    """Requests from (arrival s, model index, prompt tokens, output tokens[, cached prompt tokens]) tuples,
    in arrival order."""
    ordered = sorted(records, key=lambda r: r[0])
    return [SimRequest(id=i, arrival=r[0], model=r[1], prompt_tokens=r[2], output_tokens=r[3],
                       cached_tokens=r[4] if len(r) > 4 else 0) for i, r in enumerate(ordered)]
