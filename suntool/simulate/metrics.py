"""Numbers from a simulated run, in the units `suntool bench` reports.

`summarize(outcome, devices, slo)` gives a `SimSummary`: output tokens/s and requests/s
over the run (first arrival to last token, as the benchmark's wall time), output tokens/s
per device, TTFT / TPOT / end-to-end percentiles (`suntool.bench.report.percentiles`,
seconds), SLO attainment (share of requests meeting every given SLO) and goodput
(those per second), peak KV use of the busiest decode instance, the mean decode batch,
and the busiest instance's utilization per stage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from suntool.simulate.sim import SimOutcome


@dataclass(frozen=True)
class SLOTarget:
    ttft: float | None = None
    tpot: float | None = None

    @property
    def given(self) -> bool:
        return self.ttft is not None or self.tpot is not None

    def met(self, ttft: float, tpot: float | None) -> bool:
        if self.ttft is not None and ttft > self.ttft:
            return False
        return not (self.tpot is not None and tpot is not None and tpot > self.tpot)


@dataclass(frozen=True)
class SimSummary:
    requests: int
    devices: int
    duration_s: float
    output_token_throughput: float
    request_throughput: float
    throughput_per_device: float
    ttft: dict
    tpot: dict
    e2e: dict
    slo_attainment: float
    goodput: float
    kv_peak: float
    mean_decode_batch: float
    prefill_utilization: float
    decode_utilization: float
    prefix_hit_rate: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(outcome: SimOutcome, devices: int, slo: SLOTarget) -> SimSummary:
    from suntool.bench.report import percentiles

    traces = outcome.traces
    start = min(t.request.arrival for t in traces)
    duration = max(max(t.last_token for t in traces) - start, 1e-9)
    tokens = sum(t.request.output_tokens for t in traces)
    met = sum(slo.met(t.ttft, t.tpot) for t in traces)
    batches = outcome.decode_batches
    return SimSummary(
        requests=len(traces), devices=devices, duration_s=duration,
        output_token_throughput=tokens / duration, request_throughput=len(traces) / duration,
        throughput_per_device=tokens / duration / devices,
        ttft=percentiles([t.ttft for t in traces]),
        tpot=percentiles([t.tpot for t in traces if t.tpot is not None]),
        e2e=percentiles([t.last_token - t.request.arrival for t in traces]),
        slo_attainment=met / len(traces), goodput=met / duration,
        kv_peak=max(outcome.kv_peak, default=0.0),
        mean_decode_batch=sum(batches) / len(batches) if batches else 0.0,
        prefill_utilization=max(outcome.prefill_busy, default=0.0) / duration,
        decode_utilization=max(outcome.decode_busy, default=0.0) / duration,
        prefix_hit_rate=sum(t.prefix_hit for t in traces) / len(traces),
    )
