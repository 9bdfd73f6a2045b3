"""`suntool simulate` as a library call: build the costs, run every layout, search capacities.

`run_simulation(SimConfig(...))` returns, per layout, the `SimSummary` at the workload's
rate and, when an SLO is given, searches (each search run spans at least
`search_seconds` of arrivals, since a short burst would hide an overload):

- `devices_needed` (default on): the fewest devices with which at least `ATTAINMENT`
  (90 %) of the requests meet the SLOs at the workload's rate, growing from the layout's
  minimum (one instance per per-model group, one per shared group) one device at a time
  on the stage where the missing requests spent more time; the rate's output tokens/s
  divided by it is `throughput_per_needed_device`, the "throughput per GPU" of the SUN
  paper (and the per-GPU goodput of DistServe);
- `max_rate` (`capacity=True`): the highest rate the layout's given devices sustain at
  the SLOs (exponential then binary search), and its output tokens/s per device.

`sweep(config, parameter, values)` repeats it over `models`, `zipf`, `rate`,
`prompt_len`, `output_len` or `decode_devices`. Costs come from a `CostSource`: a
roofline (device + model; QSUN's decode half in 4 bits) or a measured profile (then all
instances are threads of one host with the profile's cores, as in the local engine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from suntool.errors import SuntoolError
from suntool.simulate.cluster import LAYOUTS, ClusterConfig, plan_cluster
from suntool.simulate.metrics import SimSummary, SLOTarget, summarize
from suntool.simulate.sim import SimOutcome, simulate
from suntool.simulate.workload import SimRequest, WorkloadConfig, make_requests

ATTAINMENT = 0.9
MAX_SEARCH_REQUESTS = 8000
SWEEPABLE = ("models", "zipf", "rate", "prompt_len", "output_len", "decode_devices")


@dataclass(frozen=True)
class CostSource:
    device: str = "H100"
    model: str = "Llama-3.1-8B"
    profile: str | None = None
    bandwidth: float | None = None  # B/s overrides of the device table
    flops: float | None = None
    memory: float | None = None
    link_bandwidth: float = 50e9
    overhead: float = 0.002
    max_batch: int = 256


@dataclass(frozen=True)
class SimConfig:
    workload: WorkloadConfig = WorkloadConfig()
    layouts: tuple[str, ...] = LAYOUTS
    costs: CostSource = CostSource()
    prefill_devices: int | None = None
    decode_devices: int | None = None
    slo: SLOTarget = SLOTarget()
    search: bool = True  # with an SLO: devices needed at the rate
    capacity: bool = False  # with an SLO: the highest rate the layout's devices sustain
    max_devices: int = 256
    search_seconds: float = 30.0  # each search run spans at least this much arrival time
    prefix_cache: bool = True

    def validate(self) -> None:
        self.workload.validate()
        for layout in self.layouts:
            if layout not in LAYOUTS:
                raise SuntoolError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
        if self.costs.profile and "qsun" in self.layouts:
            raise SuntoolError("a measured profile has one decode cost: simulate qsun on a roofline, or profile "
                               "a 4-bit artifact and simulate it as sun")
        for name, value in (("--slo-ttft", self.slo.ttft), ("--slo-tpot", self.slo.tpot)):
            if value is not None and not value > 0:
                raise SuntoolError(f"{name} must be positive seconds, got {value}")


@dataclass
class LayoutResult:
    layout: str
    prefill_devices: int
    decode_devices: int
    summary: SimSummary
    max_rate: float | None = None
    goodput_per_device: float | None = None
    devices_needed: tuple[int, int] | None = None  # (prefill, decode)
    throughput_per_needed_device: float | None = None  # output tokens/s per device at the rate, SLOs met
    at_needed: SimSummary | None = None  # the run with the devices needed
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"layout": self.layout, "prefill_devices": self.prefill_devices, "decode_devices": self.decode_devices,
                **self.summary.to_dict(), "max_rate": self.max_rate, "goodput_per_device": self.goodput_per_device,
                "devices_needed": list(self.devices_needed) if self.devices_needed else None,
                "throughput_per_needed_device": self.throughput_per_needed_device,
                "at_needed": self.at_needed.to_dict() if self.at_needed else None, "notes": self.notes}


class Costs:
    """The prefill and decode cost models of each layout for one `CostSource`."""

    def __init__(self, source: CostSource):
        self.source = source
        if source.profile:
            from suntool.simulate.costs import ProfileCosts
            from suntool.simulate.profile import load_profile

            profile = load_profile(source.profile)
            self.base = ProfileCosts(profile)
            self.host_cores: int | None = profile.cores
            self.thread_speedup, self.pair_speed = profile.thread_speedup, profile.pair_speed
            self.serial_host = profile.mixed_steps
        else:
            from suntool.simulate.costs import Roofline
            from suntool.simulate.hardware import device_spec
            from suntool.simulate.modelcfg import model_shape

            device = device_spec(source.device, bandwidth=source.bandwidth, flops=source.flops, memory=source.memory)
            self.base = Roofline(device, model_shape(source.model), link_bandwidth=source.link_bandwidth,
                                 overhead=source.overhead, max_batch=source.max_batch)
            self.base.kv_capacity(1)  # the model must fit one device
            self.host_cores, self.thread_speedup, self.pair_speed = None, 1.0, None
            self.serial_host = False
        self.label = self.base.label

    def for_layout(self, layout: str):
        return self.base, (self.base.quantized(4) if layout == "qsun" else self.base)

    def default_devices(self, layout: str, models: int, prefill: int | None, decode: int | None) -> tuple[int, int]:
        if self.host_cores is not None:  # the local engine: a prefill thread per prefill group, N decode workers
            return (1 if layout == "prefillshare" else models), decode or 1
        return prefill or models, decode or models


def run_layout(config: SimConfig, costs: Costs, layout: str, requests: list[SimRequest],
               devices: tuple[int, int]) -> tuple[SimSummary, SimOutcome]:
    cluster = ClusterConfig(layout=layout, models=config.workload.models, prefill_devices=devices[0],
                            decode_devices=devices[1], shared_host_cores=costs.host_cores,
                            popularity=tuple(config.workload.weights()), prefix_cache=config.prefix_cache)
    plan = plan_cluster(cluster)
    prefill_costs, decode_costs = costs.for_layout(layout)
    outcome = simulate(plan, requests, prefill_costs, decode_costs, shared_host_cores=costs.host_cores,
                       prefix_cache=config.prefix_cache, thread_speedup=costs.thread_speedup,
                       pair_speed=costs.pair_speed, serial_host=costs.serial_host)
    devices = 1 if costs.host_cores is not None else plan.devices  # a profile: every thread on one machine
    return summarize(outcome, devices, config.slo), outcome


def steady_requests(config: SimConfig, rate: float) -> list[SimRequest]:
    """Requests at `rate` spanning at least `search_seconds` (a finite burst would hide an overload)."""
    count = max(config.workload.requests, min(MAX_SEARCH_REQUESTS, math.ceil(rate * config.search_seconds)))
    return make_requests(replace(config.workload, rate=rate, requests=count))


def max_rate(config: SimConfig, costs: Costs, layout: str, devices: tuple[int, int]) -> float:
    """The highest rate (req/s) at which ATTAINMENT of the requests meet the SLOs; 0 if none does."""
    base_rate = config.workload.rate if not math.isinf(config.workload.rate) else 1.0

    def ok(rate: float) -> bool:
        summary, _ = run_layout(config, costs, layout, steady_requests(config, rate), devices)
        return summary.slo_attainment >= ATTAINMENT

    lo, hi = None, base_rate
    for _ in range(14):
        if ok(hi):
            lo, hi = hi, hi * 2
        else:
            break
    else:
        return hi
    if lo is None:
        lo = hi
        for _ in range(14):
            lo /= 2
            if ok(lo):
                break
        else:
            return 0.0
        hi = lo * 2
    for _ in range(4):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def devices_needed(config: SimConfig, costs: Costs, layout: str,
                   requests: list[SimRequest]) -> tuple[tuple[int, int], SimSummary] | None:
    """The fewest (prefill, decode) devices meeting the SLOs at the workload's rate, and the run with them;
    None past `max_devices`."""
    m = config.workload.models
    prefill = 1 if layout == "prefillshare" else m
    decode = 1 if layout in ("sun", "qsun") else m
    while prefill + decode <= config.max_devices:
        summary, outcome = run_layout(config, costs, layout, requests, (prefill, decode))
        if summary.slo_attainment >= ATTAINMENT:
            return (prefill, decode), summary
        # blame each miss on a stage: a TTFT miss on the prefill stage when the request spent longer
        # reaching the end of its prefill than waiting for its first decode step; a TPOT miss on decode
        blame_prefill = blame_decode = 0
        for t in outcome.traces:
            if config.slo.met(t.ttft, t.tpot):
                continue
            ttft_missed = config.slo.ttft is not None and t.ttft > config.slo.ttft
            if ttft_missed and t.prefill_end - t.request.arrival > t.first_token - t.prefill_end:
                blame_prefill += 1
            else:
                blame_decode += 1
        if blame_prefill > blame_decode:
            prefill += 1
        else:
            decode += 1
    return None


def run_simulation(config: SimConfig, costs: Costs | None = None, say=None) -> list[LayoutResult]:
    """Every layout at the workload's rate, plus the SLO searches when an SLO is given and `search` is on."""
    config.validate()
    costs = costs or Costs(config.costs)
    say = say or (lambda _m: None)
    requests = make_requests(config.workload)
    results = []
    for layout in config.layouts:
        devices = costs.default_devices(layout, config.workload.models, config.prefill_devices, config.decode_devices)
        say(f"{layout}: {devices[0]} prefill + {devices[1]} decode, {len(requests)} requests")
        summary, _ = run_layout(config, costs, layout, requests, devices)
        result = LayoutResult(layout, devices[0], devices[1], summary)
        mean_output = sum(r.output_tokens for r in requests) / len(requests)
        if config.slo.given and config.capacity:
            say(f"{layout}: searching the highest rate meeting the SLOs")
            result.max_rate = max_rate(config, costs, layout, devices)
            result.goodput_per_device = result.max_rate * mean_output / sum(devices)
        if config.slo.given and config.search and costs.host_cores is None and not math.isinf(config.workload.rate):
            say(f"{layout}: searching the devices needed at {config.workload.rate:g} req/s")
            needed = devices_needed(config, costs, layout, steady_requests(config, config.workload.rate))
            if needed:
                result.devices_needed, result.at_needed = needed
                result.throughput_per_needed_device = config.workload.rate * mean_output / sum(result.devices_needed)
        results.append(result)
    return results


def sweep(config: SimConfig, parameter: str, values: list[float], say=None) -> list[dict]:
    """`run_simulation` for each value of one parameter; rows of {"value", "results"}."""
    if parameter not in SWEEPABLE:
        raise SuntoolError(f"--sweep takes one of {', '.join(SWEEPABLE)}, got {parameter!r}")
    costs = Costs(config.costs)
    rows = []
    for value in values:
        if parameter == "decode_devices":
            varied = replace(config, decode_devices=int(value))
        else:
            field_name = {"zipf": "alpha", "models": "models"}.get(parameter, parameter)
            cast = int if parameter in ("models", "prompt_len", "output_len") else float
            varied = replace(config, workload=replace(config.workload, **{field_name: cast(value)}))
        (say or (lambda _m: None))(f"sweep {parameter}={value:g}")
        rows.append({"value": value, "results": run_simulation(varied, costs, say)})
    return rows
