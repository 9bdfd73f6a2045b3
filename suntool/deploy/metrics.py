"""Prometheus metrics of the deployment router (`/metrics`), in the style of `suntool.serve.metrics`.

All prefixed `suntool_router_`: counters `requests_total{model,status}` and
`upstream_errors_total{instance,kind}` (kind: connect, timeout, broken, status); histograms
`prefill_seconds{model}` (the prefill instance's round trip), `time_to_first_token_seconds{model}`
and `e2e_request_latency_seconds{model}` (both from the router's arrival); gauges
`instance_in_flight{instance}` (requests the router has open there) and `instance_up{instance}`
(1 unless the router saw it fail and has not yet retried it). Buckets are the server's.
"""

from __future__ import annotations

from suntool.serve.metrics import LATENCY_BUCKETS


class RouterMetrics:
    """A private registry (several routers can live in one process, as in the tests)."""

    def __init__(self, instances: list[str]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter("suntool_router_requests", "Finished requests by HTTP status.", ["model", "status"],
                                registry=registry)
        self.upstream_errors = Counter("suntool_router_upstream_errors", "Failed calls to an instance.",
                                       ["instance", "kind"], registry=registry)
        self.prefill = Histogram("suntool_router_prefill_seconds", "Prefill round trip (max_tokens=1).", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.ttft = Histogram("suntool_router_time_to_first_token_seconds", "Arrival to the first decoded chunk.",
                              ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.e2e = Histogram("suntool_router_e2e_request_latency_seconds", "Arrival to the end of the answer.",
                             ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("suntool_router_instance_in_flight", "Requests open at an instance.", ["instance"],
                               registry=registry)
        self.up = Gauge("suntool_router_instance_up", "1 unless the instance failed and was not retried yet.",
                        ["instance"], registry=registry)
        for name in instances:
            self.in_flight.labels(name).set(0)
            self.up.labels(name).set(1)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
