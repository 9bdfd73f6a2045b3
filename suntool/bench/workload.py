"""What a benchmark sends: Poisson arrivals, Zipf popularity over task models, prompt and output lengths.

`plan_requests(spec, models, count, rate)` returns `PlannedRequest`s (send offset in
seconds, model, prompt, max_tokens), reproducible from `spec.seed`:

- arrivals: a Poisson process of `rate` requests/s (exponential gaps); `rate=inf` sends
  everything at t=0;
- popularity: `zipf:ALPHA` gives model i (in the order given) probability ∝ 1/(i+1)^ALPHA,
  `uniform` equal shares;
- prompts: `dataset="tasks"` draws model i's prompts from synthetic task
  `TASKS[i % len(TASKS)]` (`suntool.evals.tasks`: each task model gets its task), with
  `max_tokens` from the reference completion's length (about 3.5 characters a token);
  `dataset="random"` builds prompts of about `input_len` tokens from common words.
  `output_len`, when given, fixes `max_tokens` for every request. Requests are sent with
  `ignore_eos`, so each generates exactly `max_tokens` tokens.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from suntool.errors import SuntoolError

WORDS = (
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "are", "with", "as", "at", "be", "this", "have",
    "from", "or", "one", "had", "by", "word", "but", "not", "what", "all", "were", "we", "when", "your", "can",
    "said", "there", "use", "an", "each", "which", "she", "do", "how", "their", "if", "will", "up", "other", "about",
    "out", "many", "then", "them", "these", "so", "some", "her", "would", "make", "like", "him", "into", "time",
    "has", "look", "two", "more", "write", "go", "see", "number", "no", "way", "could", "people", "my", "than",
    "first", "water", "been", "call", "who", "oil", "its", "now", "find", "long", "down", "day", "did", "get",
    "come", "made", "may", "part",
)


@dataclass(frozen=True)
class WorkloadSpec:
    popularity: str = "zipf"  # "zipf" | "uniform"
    alpha: float = 1.0
    dataset: str = "tasks"  # "tasks" | "random"
    input_len: int = 128  # dataset="random"
    output_len: int | None = None  # None: from the task's completions (dataset="tasks") or 64 (random)
    seed: int = 0

    @classmethod
    def parse(cls, workload: str, **kwargs) -> WorkloadSpec:
        """`zipf:1.0`, `zipf` (alpha 1) or `uniform`."""
        name, _, arg = workload.partition(":")
        if name == "uniform" and not arg:
            return cls(popularity="uniform", **kwargs)
        if name == "zipf":
            try:
                alpha = float(arg) if arg else 1.0
            except ValueError:
                alpha = -1.0
            if alpha < 0 or math.isnan(alpha):
                raise SuntoolError(f"--workload zipf:ALPHA needs a number ALPHA >= 0, got {workload!r}")
            return cls(popularity="zipf", alpha=alpha, **kwargs)
        raise SuntoolError(f"--workload must be zipf:ALPHA or uniform, got {workload!r}")

    def weights(self, count: int) -> list[float]:
        if self.popularity == "uniform":
            raw = [1.0] * count
        else:
            raw = [1.0 / (rank + 1) ** self.alpha for rank in range(count)]
        total = sum(raw)
        return [w / total for w in raw]

    def describe(self) -> str:
        popularity = "uniform" if self.popularity == "uniform" else f"zipf:{self.alpha:g}"
        lengths = f"random {self.input_len}-token prompts" if self.dataset == "random" else "synthetic task prompts"
        output = f", {self.output_len} output tokens" if self.output_len else ""
        return f"{popularity}, {lengths}{output}"


@dataclass(frozen=True)
class PlannedRequest:
    at: float  # seconds after the start
    model: str
    prompt: str
    max_tokens: int


def _task_prompts(index: int, count: int, seed: int) -> list[tuple[str, int]]:
    from suntool.evals.tasks import TASKS

    tasks = list(TASKS.values())
    task = tasks[index % len(tasks)]
    records = task.generate(count, seed + index)
    return [(r["prompt"], max(8, math.ceil(len(r["completion"]) / 3.5))) for r in records]


def tasks_available() -> bool:
    try:
        from suntool.evals.tasks import TASKS
    except ImportError:
        return False
    return bool(TASKS)


def plan_requests(spec: WorkloadSpec, models: list[str], count: int, rate: float) -> list[PlannedRequest]:
    """`count` requests over `models` arriving at `rate`/s (inf: all at once)."""
    if not models:
        raise SuntoolError("the server lists no models to benchmark")
    if count < 1:
        raise SuntoolError(f"--num-requests must be at least 1, got {count}")
    if not rate > 0:
        raise SuntoolError(f"--rate must be positive (or inf), got {rate}")
    rng = random.Random(spec.seed)
    choice = rng.choices(range(len(models)), weights=spec.weights(len(models)), k=count)
    dataset = spec.dataset
    if dataset == "tasks" and not tasks_available():
        dataset = "random"
    pools: dict[int, list[tuple[str, int]]] = {}
    per_model = {i: choice.count(i) for i in set(choice)}
    for index, needed in per_model.items():
        if dataset == "tasks":
            pools[index] = _task_prompts(index, needed, spec.seed)
        else:
            pools[index] = [
                (" ".join(rng.choice(WORDS) for _ in range(spec.input_len)), spec.output_len or 64)
                for _ in range(needed)
            ]
    t, planned, used = 0.0, [], dict.fromkeys(per_model, 0)
    for index in choice:
        if not math.isinf(rate):
            t += rng.expovariate(rate)
        prompt, default_len = pools[index][used[index]]
        used[index] += 1
        planned.append(PlannedRequest(at=0.0 if math.isinf(rate) else t, model=models[index], prompt=prompt,
                                      max_tokens=spec.output_len or default_len))
    return planned
