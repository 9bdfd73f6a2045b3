"""The discrete-event simulation of a disaggregated cluster serving several task models.

`simulate(plan, requests, prefill_costs, decode_costs, shared_host_cores=None)` replays
`requests` through the instances of a `ClusterPlan` and returns a `SimOutcome` (one
`RequestTrace` per request, busy time per instance, peak KV use):

- a request goes to the least-loaded prefill instance holding its model's prefill group
  (preferring one whose prefix cache holds its shared prefix);
- an idle instance starts once every arrival of the same instant is queued (so a burst
  batches together); a prefill instance takes its groups' FIFO queues in turn and packs
  prompts behind the head while their new tokens stay within `max_prefill_tokens` and
  `max_batch` (the local engine's rule since its packed forward; a longer prompt is one
  forward of its own, costed at its length); a cached prefix is not recomputed;
- the prompt's K/V then travels (`transfer`) to the least-loaded decode instance holding
  its decode group (load = sequences running or waiting there: model-agnostic for a
  shared group);
- a decode instance admits waiting sequences at the start of each iteration while their
  whole context (prompt + output) fits its KV capacity and, unless the cost model says
  `round_robin` (the local engine: every admitted sequence runs, `max_batch` of them per
  forward in turn), while fewer than `max_batch` run (vLLM's max_num_seqs); then it runs
  one forward per group over up to `max_batch` of that group's running sequences
  (continuous batching: one token per sequence per forward; a sequence's first token comes from its first decode
  forward, the `decode` first-token convention);
- every forward is a job on its instance's host: a device per instance, or with
  `shared_host_cores` one host whose cores the running forwards share (processor
  sharing, `thread_share`: alone a forward uses every core, k busy forwards get
  cores // k threads each, calibrated by the profile's measured `pair_speed`), which is how
  the local engine's threads share a CPU; with `serial_host` the forwards run one at a time,
  in order, at full speed (the local engine with mixed steps: one thread runs them all).

The event loop is a heap of timestamped events (a few dozen lines); see docs/simulate.md
for why it is not simpy.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from suntool.errors import SuntoolError
from suntool.simulate.cluster import ClusterPlan
from suntool.simulate.workload import SimRequest

EPS = 1e-12


@dataclass(eq=False)
class RequestTrace:
    request: SimRequest
    prompt: int = 0  # copies of the request's lengths, read in the hot loop
    output: int = 0
    prefill_start: float | None = None
    prefill_end: float | None = None
    decode_start: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    generated: int = 0
    prefix_hit: bool = False

    def __post_init__(self) -> None:
        self.prompt, self.output = self.request.prompt_tokens, self.request.output_tokens

    @property
    def done(self) -> bool:
        return self.generated >= self.output

    @property
    def ttft(self) -> float:
        return self.first_token - self.request.arrival

    @property
    def tpot(self) -> float | None:
        n = self.request.output_tokens
        return (self.last_token - self.first_token) / (n - 1) if n > 1 else None

    @property
    def context(self) -> int:
        return self.request.prompt_tokens + self.generated


@dataclass
class SimOutcome:
    traces: list[RequestTrace]
    prefill_busy: list[float]
    decode_busy: list[float]
    kv_peak: list[float]  # per decode instance: peak reserved share of its KV capacity (0 when unbounded)
    decode_batches: list[int] = field(default_factory=list)  # batch size of every decode forward


def thread_share(busy: int, cores: int, speedup: float, pair_speed: float | None = None) -> float:
    """The speed of each of `busy` forwards on `cores` cores, relative to one forward alone.

    As the local engine runs them: a forward alone uses every core (it runs `speedup` times
    faster than on one core); k busy forwards get cores // k threads each (one each beyond
    `cores`, then time-sliced). Thread scaling between 1 and `cores` threads is linear.
    With `speedup` = 1 (one thread per forward, as before the engine shared its cores) it
    is min(1, cores / busy).

    `pair_speed` (measured: each of two forwards running at once, relative to one alone)
    calibrates that shape at two busy forwards: cores that share memory bandwidth (or are
    SMT siblings) slow concurrent forwards more than thread counts say, so every share is
    scaled by pair_speed / (the share the shape gives two).
    """
    if busy <= 1:
        return 1.0
    if pair_speed is not None and cores > 1:
        return thread_share(busy, cores, speedup) * pair_speed / thread_share(2, cores, speedup)

    def speed(threads: int) -> float:
        return 1.0 + (speedup - 1.0) * (threads - 1) / (cores - 1) if cores > 1 else 1.0

    threads = max(1, cores // busy)
    return speed(threads) / speed(cores) * min(1.0, cores / busy)


class _Loop:
    def __init__(self):
        self.now = 0.0
        self.heap: list = []
        self.counter = itertools.count()

    def at(self, time: float, action, *args) -> None:
        heapq.heappush(self.heap, (time, next(self.counter), action, args))

    def run(self) -> None:
        while self.heap:
            time, _, action, args = heapq.heappop(self.heap)
            self.now = max(self.now, time)
            action(*args)


class _Host:
    """Processor sharing: with n forwards running, each progresses at `share(n)` of its solo speed.

    `serial`: one forward at a time, in the order they were started, each at full speed — the local
    engine with mixed steps, where one thread runs every forward (prefill chunks, then the decode step).
    """

    def __init__(self, loop: _Loop, cores: int, speedup: float = 1.0, pair_speed: float | None = None,
                 serial: bool = False):
        self.loop, self.cores, self.speedup, self.pair_speed = loop, cores, speedup, pair_speed
        self.serial = serial
        self.jobs: dict[int, list] = {}  # id -> [remaining solo seconds, callback], in start order
        self.last = 0.0
        self.version = 0
        self.ids = itertools.count()

    def _rate(self) -> float:
        return 1.0 if self.serial else thread_share(len(self.jobs), self.cores, self.speedup, self.pair_speed)

    def _running(self) -> list[list]:
        jobs = list(self.jobs.values())
        return jobs[:1] if self.serial else jobs

    def _advance(self) -> None:
        now, rate = self.loop.now, self._rate()
        for job in self._running():
            job[0] -= (now - self.last) * rate
        self.last = now

    def _schedule(self) -> None:
        self.version += 1
        if self.jobs:
            remaining = min(job[0] for job in self._running())
            self.loop.at(self.loop.now + max(remaining, 0.0) / self._rate(), self._tick, self.version)

    def run(self, seconds: float, callback) -> None:
        self._advance()
        self.jobs[next(self.ids)] = [seconds, callback]
        self._schedule()

    def _tick(self, version: int) -> None:
        if version != self.version:
            return
        self._advance()
        finished = [key for key, job in self.jobs.items() if job[0] <= 1e-9]
        callbacks = [self.jobs.pop(key)[1] for key in finished]
        self._schedule()
        for callback in callbacks:
            callback()


class _Prefill:
    def __init__(self, sim: _Sim, index: int, groups: tuple[int, ...], host: _Host, cache_tokens: int | None):
        self.sim, self.index, self.groups, self.host = sim, index, groups, host
        self.queues = {g: deque() for g in groups}
        self.cache = {g: OrderedDict() for g in groups}  # prefix id -> tokens, LRU
        self.cache_tokens = cache_tokens
        self.busy, self.busy_time, self.turn = False, 0.0, 0

    @property
    def load(self) -> int:
        return sum(len(q) for q in self.queues.values()) + (1 if self.busy else 0)

    def has_prefix(self, group: int, prefix: int | None) -> bool:
        return prefix is not None and prefix in self.cache[group]

    def add(self, trace: RequestTrace, group: int) -> None:
        self.queues[group].append(trace)
        if not self.busy:  # start after every arrival of this instant is queued, so they batch together
            self.busy = True
            self.sim.loop.at(self.sim.loop.now, self._start)

    def _start(self) -> None:
        order = self.groups[self.turn:] + self.groups[: self.turn]
        group = next((g for g in order if self.queues[g]), None)
        if group is None:
            self.busy = False
            return
        self.turn = (self.groups.index(group) + 1) % len(self.groups)
        queue, costs = self.queues[group], self.sim.prefill_costs
        batch, rows, tokens = [], [], 0
        while queue and len(batch) < costs.max_batch:
            request = queue[0].request
            hit = self.sim.prefix_cache and self.has_prefix(group, request.prefix_id)
            cached = max(request.prefix_tokens if hit else 0, request.cached_tokens)
            new = request.prompt_tokens - cached
            if batch and tokens + new > costs.max_prefill_tokens:
                break
            trace = queue.popleft()
            trace.prefill_start, trace.prefix_hit = self.sim.loop.now, cached > 0
            batch.append(trace)
            rows.append((new, cached))
            tokens += new
        seconds = costs.prefill(rows)
        self.busy = True
        self.busy_time += seconds
        self.host.run(seconds, lambda: self._done(group, batch))

    def _done(self, group: int, batch: list[RequestTrace]) -> None:
        now = self.sim.loop.now
        for trace in batch:
            trace.prefill_end = now
            self._remember(group, trace.request)
            self.sim.to_decode(trace)
        self._start()

    def _remember(self, group: int, request: SimRequest) -> None:
        if request.prefix_id is None or not self.sim.prefix_cache:
            return
        cache = self.cache[group]
        cache[request.prefix_id] = request.prefix_tokens
        cache.move_to_end(request.prefix_id)
        while self.cache_tokens is not None and sum(cache.values()) > self.cache_tokens and len(cache) > 1:
            cache.popitem(last=False)


class _Decode:
    def __init__(self, sim: _Sim, index: int, groups: tuple[int, ...], host: _Host, capacity: int | None):
        self.sim, self.index, self.groups, self.host, self.capacity = sim, index, groups, host, capacity
        self.inbox: deque[RequestTrace] = deque()
        self.running: dict[int, list[RequestTrace]] = {g: [] for g in groups}
        self.reserved, self.peak = 0, 0.0
        self.busy, self.busy_time = False, 0.0
        self.plan: list[int] = []

    @property
    def load(self) -> int:
        return len(self.inbox) + sum(len(r) for r in self.running.values())

    def add(self, trace: RequestTrace) -> None:
        self.inbox.append(trace)
        if not self.busy:  # start after every arrival of this instant is in the inbox
            self.busy = True
            self.sim.loop.at(self.sim.loop.now, self._iteration)

    def _iteration(self) -> None:
        cap = None if self.sim.decode_costs.round_robin else self.sim.decode_costs.max_batch
        while self.inbox:
            need = self.inbox[0].prompt + self.inbox[0].output
            if self.capacity is not None and self.reserved + need > self.capacity:
                break
            if cap is not None and sum(len(r) for r in self.running.values()) >= cap:
                break
            trace = self.inbox.popleft()
            self.reserved += need
            if self.capacity:
                self.peak = max(self.peak, self.reserved / self.capacity)
            trace.decode_start = self.sim.loop.now
            self.running[self.sim.plan.decode_group[trace.request.model]].append(trace)
        self.plan = [g for g in self.groups if self.running[g]]
        self.busy = bool(self.plan)
        if self.busy:
            self._forward()

    def _forward(self) -> None:
        group = self.plan.pop(0)
        running = self.running[group]
        batch = running[: self.sim.decode_costs.max_batch]
        seconds = self.sim.decode_costs.decode(len(batch), sum(t.prompt + t.generated for t in batch))
        self.busy_time += seconds
        self.sim.batches.append(len(batch))
        self.host.run(seconds, lambda: self._done(group, batch))

    def _done(self, group: int, batch: list[RequestTrace]) -> None:
        now, finished = self.sim.loop.now, False
        for trace in batch:
            generated = trace.generated = trace.generated + 1
            if generated == 1:
                trace.first_token = now
            if generated >= trace.output:
                trace.last_token = now
                finished = True
                self.reserved -= trace.prompt + trace.output
        running = self.running[group]
        if finished or len(running) > len(batch):  # drop the finished; round-robin when more run than fit
            stepped = set(map(id, batch))
            self.running[group] = [t for t in running if id(t) not in stepped] + [
                t for t in batch if t.generated < t.output]
        if self.plan:
            self._forward()
        else:
            self._iteration()


class _Sim:
    def __init__(self, plan, requests, prefill_costs, decode_costs, shared_host_cores, prefix_cache, speedup,
                 pair_speed=None, serial_host=False):
        self.plan, self.prefill_costs, self.decode_costs = plan, prefill_costs, decode_costs
        self.prefix_cache = prefix_cache
        self.loop = _Loop()
        self.batches: list[int] = []
        shared = (_Host(self.loop, shared_host_cores, speedup, pair_speed, serial=serial_host)
                  if shared_host_cores else None)
        decode_count = len(plan.decode)

        def host() -> _Host:
            return shared or _Host(self.loop, 1)

        def capacity(costs, groups, *, decode):
            total = costs.kv_capacity(len(groups) if not shared else 1, decode=decode)
            return None if total is None else (total // decode_count if shared else total)

        self.prefills = [_Prefill(self, i, groups, host(), capacity(prefill_costs, groups, decode=False))
                         for i, groups in enumerate(plan.prefill)]
        self.decodes = [_Decode(self, i, groups, host(), capacity(decode_costs, groups, decode=True))
                        for i, groups in enumerate(plan.decode)]
        self.traces = [RequestTrace(r) for r in requests]
        biggest = max((r.prompt_tokens + r.output_tokens for r in requests), default=0)
        for d in self.decodes:
            if d.capacity is not None and biggest > d.capacity:
                raise SuntoolError(f"a request of {biggest} tokens does not fit one decode instance's KV cache "
                                   f"({d.capacity} tokens); shorten the prompts/outputs or use a larger device")
        for trace in self.traces:
            self.loop.at(trace.request.arrival, self.arrive, trace)

    def arrive(self, trace: RequestTrace) -> None:
        request = trace.request
        group = self.plan.prefill_group[request.model]
        candidates = [p for p in self.prefills if group in p.groups]
        warm = [p for p in candidates if p.has_prefix(group, request.prefix_id)]
        target = min(warm or candidates, key=lambda p: (p.load, p.index))
        target.add(trace, group)

    def to_decode(self, trace: RequestTrace) -> None:
        group = self.plan.decode_group[trace.request.model]
        target = min((d for d in self.decodes if group in d.groups), key=lambda d: (d.load, d.index))
        delay = self.decode_costs.transfer(trace.request.prompt_tokens)
        self.loop.at(self.loop.now + delay, target.add, trace)


def simulate(plan: ClusterPlan, requests: list[SimRequest], prefill_costs, decode_costs, *,
             shared_host_cores: int | None = None, prefix_cache: bool = True,
             thread_speedup: float = 1.0, pair_speed: float | None = None,
             serial_host: bool = False) -> SimOutcome:
    """Run every request to completion; see the module docstring for the rules."""
    sim = _Sim(plan, requests, prefill_costs, decode_costs, shared_host_cores, prefix_cache, thread_speedup,
               pair_speed, serial_host)
    sim.loop.run()
    unfinished = [t for t in sim.traces if not t.done]
    if unfinished:  # a bug, not a user error: every request must finish
        raise RuntimeError(f"{len(unfinished)} requests never finished")
    return SimOutcome(traces=sim.traces, prefill_busy=[p.busy_time for p in sim.prefills],
                      decode_busy=[d.busy_time for d in sim.decodes], kv_peak=[d.peak for d in sim.decodes],
                      decode_batches=sim.batches)
