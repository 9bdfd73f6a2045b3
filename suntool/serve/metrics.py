"""Prometheus metrics of one server, fed by the engine's observer hooks.

`ServerMetrics` is an `EngineObserver` with its own `CollectorRegistry` (so several
servers can live in one process, as in the tests). It exports, all prefixed `suntool_`:
histograms `time_to_first_token_seconds`, `time_per_output_token_seconds`,
`queue_time_seconds`, `e2e_request_latency_seconds` (per model) and `decode_batch_size`,
`decode_batch_models`; counters `generation_tokens_total`, `prompt_tokens_total`,
`requests_total` (per model and finish reason), `requests_received_total`, `preemptions_total`,
`prefix_cache_hit_tokens_total`; gauges `requests_running`, `requests_waiting`,
`kv_blocks_used`, `kv_blocks_free`, `kv_blocks_cached`, and
`generation_tokens_per_second` over the last 10 seconds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from suntool.serve.engine import EngineObserver

if TYPE_CHECKING:
    from suntool.serve.engine import Engine
    from suntool.serve.sequence import Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0,
                   40.0, 80.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
RATE_WINDOW_S = 10.0


class ServerMetrics(EngineObserver):
    """Engine observer that records into a private Prometheus registry."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.engine: Engine | None = None

        def histogram(name, doc, labels=(), buckets=LATENCY_BUCKETS):
            return Histogram(f"suntool_{name}", doc, labels, buckets=buckets, registry=registry)

        self.ttft = histogram("time_to_first_token_seconds", "Arrival to first generated token.", ["model"])
        self.tpot = histogram("time_per_output_token_seconds", "Mean gap between output tokens of a request.",
                              ["model"])
        self.queue_time = histogram("queue_time_seconds", "Arrival to start of prefill.", ["model"])
        self.e2e = histogram("e2e_request_latency_seconds", "Arrival to last token.", ["model"])
        self.batch = histogram("decode_batch_size", "Sequences per decode forward.", buckets=BATCH_BUCKETS)
        self.batch_models = histogram("decode_batch_models", "Distinct task models per decode forward.",
                                      buckets=BATCH_BUCKETS)
        self.generated = Counter("suntool_generation_tokens", "Generated tokens.", ["model"], registry=registry)
        self.prompt = Counter("suntool_prompt_tokens", "Prompt tokens admitted.", ["model"], registry=registry)
        self.requests = Counter("suntool_requests", "Finished requests.", ["model", "finish_reason"],
                                registry=registry)
        self.received = Counter("suntool_requests_received", "Admitted requests.", ["model"], registry=registry)
        self._recent: deque[tuple[float, int]] = deque()
        self._recent_lock = threading.Lock()

        def stat(name):
            return lambda: getattr(self.engine.stats(), name) if self.engine is not None else 0

        for name, field, doc in [
            ("requests_running", "running", "Requests in the decode pool."),
            ("requests_waiting", "waiting", "Requests queued or in prefill."),
            ("kv_blocks_used", "kv_blocks_used", "KV blocks referenced by sequences."),
            ("kv_blocks_free", "kv_blocks_free", "KV blocks an allocation can take."),
            ("kv_blocks_cached", "kv_blocks_cached", "KV blocks registered in the prefix cache."),
        ]:
            Gauge(f"suntool_{name}", doc, registry=registry).set_function(stat(field))
        for name, field, doc in [
            ("preemptions_total", "preemptions", "Sequences preempted for lack of KV blocks."),
            ("prefix_cache_hit_tokens_total", "prefix_hit_tokens", "Prompt tokens served from the prefix cache."),
        ]:
            Gauge(f"suntool_{name}", doc, registry=registry).set_function(stat(field))
        Gauge("suntool_generation_tokens_per_second", f"Decode tokens per second over the last {RATE_WINDOW_S:g} s.",
              registry=registry).set_function(self.tokens_per_second)

    def attach(self, engine: Engine) -> None:
        self.engine = engine

    def tokens_per_second(self) -> float:
        cutoff = time.perf_counter() - RATE_WINDOW_S
        with self._recent_lock:
            while self._recent and self._recent[0][0] < cutoff:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / RATE_WINDOW_S

    # -- EngineObserver --------------------------------------------------------------------------------------------
    def on_admitted(self, seq: Sequence) -> None:
        self.received.labels(seq.model.name).inc()

    def on_scheduled(self, seq: Sequence) -> None:
        self.queue_time.labels(seq.model.name).observe(seq.scheduled - seq.arrival)
        self.prompt.labels(seq.model.name).inc(len(seq.prompt_ids))

    def on_first_token(self, seq: Sequence) -> None:
        self.ttft.labels(seq.model.name).observe(seq.first_token - seq.arrival)

    def on_finish(self, seq: Sequence) -> None:
        name = seq.model.name
        self.requests.labels(name, seq.finish_reason).inc()
        if seq.output_ids:
            self.generated.labels(name).inc(len(seq.output_ids))
        if seq.finish_reason in ("stop", "length") and seq.first_token is not None:
            self.e2e.labels(name).observe(seq.finish_time - seq.arrival)
            if len(seq.output_ids) > 1:
                self.tpot.labels(name).observe((seq.last_token - seq.first_token) / (len(seq.output_ids) - 1))

    def on_step(self, batch_size: int, num_models: int) -> None:
        self.batch.observe(batch_size)
        self.batch_models.observe(num_models)
        with self._recent_lock:
            self._recent.append((time.perf_counter(), batch_size))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
