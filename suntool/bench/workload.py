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

Multi-agent workloads (`agents:K`, `agents:K:pipeline`, `agents:K:parallel`): `count` is
the number of **shared contexts** (sessions), arriving as a Poisson process of `rate`
contexts/s; each goes to K agents, agent k served by model `models[k % len(models)]`, and
makes K requests (all in one session, `PlannedRequest.session`). The context is a long
prompt: about `input_len` words of synthetic task prompts (`dataset="tasks"`) or of
common words (`"random"`). `max_tokens` is `output_len` (default 32).

- `pipeline` (the default): the agents answer in turn. Agent 1's prompt is the context and
  the header `AGENT_HEADER`; agent k+1 has `after` = the plan index of agent k and a prompt
  that is only its header: the client sends it when agent k's answer ends, as agent k's
  prompt + agent k's answer + this header. Every later prompt therefore starts with the
  whole previous prompt (a prefix-cache hit for a server that shares prefill across models).
- `parallel`: all K agents get the context + their header at the session's arrival time.
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


AGENT_MODES = ("pipeline", "parallel")
AGENT_OUTPUT_LEN = 32  # max_tokens of an agent's answer without output_len
AGENT_HEADER = "\n\n### Agent {number}\n"  # what each agent's own part of its prompt starts with
WORKLOAD_FORMS = "zipf:ALPHA, uniform or agents:K[:pipeline|parallel]"


def _parse_agents(workload: str, arg: str) -> tuple[int, str]:
    count, _, mode = arg.partition(":")
    try:
        agents = int(count)
    except ValueError:
        agents = 0
    if agents < 1:
        raise SuntoolError(f"--workload agents:K needs a whole number of agents K >= 1, got {workload!r}")
    mode = mode or "pipeline"
    if mode not in AGENT_MODES:
        raise SuntoolError(f"--workload agents:K:MODE: MODE must be pipeline (in turn) or parallel (at once), "
                           f"got {workload!r}")
    return agents, mode


@dataclass(frozen=True)
class WorkloadSpec:
    popularity: str = "zipf"  # "zipf" | "uniform" | "agents"
    alpha: float = 1.0
    dataset: str = "tasks"  # "tasks" | "random"
    input_len: int = 128  # dataset="random"; agents: the shared context's length in words
    output_len: int | None = None  # None: from the task's completions (dataset="tasks") or 64 (random)
    seed: int = 0
    agents: int = 0  # popularity="agents": K task models per shared context
    agent_mode: str = "pipeline"  # "pipeline" (in turn) | "parallel" (at once)

    @classmethod
    def parse(cls, workload: str, **kwargs) -> WorkloadSpec:
        """`zipf:1.0`, `zipf` (alpha 1), `uniform`, `agents:K`, `agents:K:pipeline` or `agents:K:parallel`."""
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
        if name == "agents":
            agents, mode = _parse_agents(workload, arg)
            return cls(popularity="agents", agents=agents, agent_mode=mode, **kwargs)
        raise SuntoolError(f"--workload must be {WORKLOAD_FORMS}, got {workload!r}")

    def weights(self, count: int) -> list[float]:
        if self.popularity == "uniform":
            raw = [1.0] * count
        else:
            raw = [1.0 / (rank + 1) ** self.alpha for rank in range(count)]
        total = sum(raw)
        return [w / total for w in raw]

    def describe(self) -> str:
        if self.popularity == "agents":
            source = "task prompts" if self.dataset == "tasks" else "random words"
            return (f"agents:{self.agents}:{self.agent_mode}, {self.input_len}-word shared contexts of {source}, "
                    f"{self.output_len or AGENT_OUTPUT_LEN} output tokens per agent")
        popularity = "uniform" if self.popularity == "uniform" else f"zipf:{self.alpha:g}"
        lengths = f"random {self.input_len}-token prompts" if self.dataset == "random" else "synthetic task prompts"
        output = f", {self.output_len} output tokens" if self.output_len else ""
        return f"{popularity}, {lengths}{output}"


@dataclass(frozen=True)
class PlannedRequest:
    at: float  # seconds after the start (with `after`: the session's arrival; sent when `after` ends)
    model: str
    prompt: str  # with `after`: what follows the prompt and answer of request `after`
    max_tokens: int
    session: int | None = None  # the shared context this request belongs to (agents workloads)
    after: int | None = None  # plan index of the request whose end sends this one (pipeline)


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
    if spec.popularity == "agents":
        return plan_agent_sessions(spec, models, count, rate)
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


def _context(spec: WorkloadSpec, session: int, rng: random.Random) -> str:
    """A long shared prompt of about `spec.input_len` words: task prompts joined, or common words."""
    if spec.dataset == "tasks" and tasks_available():
        from suntool.evals.tasks import TASKS

        tasks = list(TASKS.values())
        parts, words, number = [], 0, 0
        while words < spec.input_len:
            record = tasks[(session + number) % len(tasks)].generate(1, spec.seed * 100_003 + session * 101 + number)[0]
            parts.append(record["prompt"] + record["completion"])
            words += len(parts[-1].split())
            number += 1
        return " ".join(" ".join(parts).split()[: spec.input_len])
    return " ".join(rng.choice(WORDS) for _ in range(spec.input_len))


def plan_agent_sessions(spec: WorkloadSpec, models: list[str], sessions: int, rate: float) -> list[PlannedRequest]:
    """`sessions` shared contexts arriving at `rate`/s, each sent to `spec.agents` agents (see the module doc)."""
    if spec.agent_mode not in AGENT_MODES:
        raise SuntoolError(f"agent mode must be pipeline or parallel, got {spec.agent_mode!r}")
    if spec.input_len < 1:
        raise SuntoolError(f"--input-len (the shared context's length) must be at least 1, got {spec.input_len}")
    rng = random.Random(spec.seed)
    max_tokens = spec.output_len or AGENT_OUTPUT_LEN
    t, planned = 0.0, []
    for session in range(sessions):
        if not math.isinf(rate):
            t += rng.expovariate(rate)
        at = 0.0 if math.isinf(rate) else t
        context = _context(spec, session, rng)
        for agent in range(spec.agents):
            header = AGENT_HEADER.format(number=agent + 1)
            chained = spec.agent_mode == "pipeline" and agent > 0
            planned.append(PlannedRequest(
                at=at, model=models[agent % len(models)], prompt=header if chained else context + header,
                max_tokens=max_tokens, session=session, after=len(planned) - 1 if chained else None))
    return planned
