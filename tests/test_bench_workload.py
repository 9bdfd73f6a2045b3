"""The benchmark's arithmetic: Poisson arrivals, Zipf popularity, prompts, percentiles, goodput, ratios."""

from __future__ import annotations

import math
import statistics

import pytest

from suntool.bench.client import RequestRecord
from suntool.bench.report import SLO, compare_ratios, percentiles, summarize
from suntool.bench.workload import WorkloadSpec, plan_requests
from suntool.errors import SuntoolError

MODELS = ["a", "b", "c", "d"]


def test_workload_parsing():
    assert WorkloadSpec.parse("zipf:1.5").alpha == 1.5
    assert WorkloadSpec.parse("zipf").alpha == 1.0
    assert WorkloadSpec.parse("uniform").weights(4) == [0.25] * 4
    for bad in ("zipf:x", "zipf:-1", "pareto", "uniform:2"):
        with pytest.raises(SuntoolError, match="--workload"):
            WorkloadSpec.parse(bad)


def test_poisson_arrivals_have_the_requested_rate_and_are_reproducible():
    spec = WorkloadSpec(dataset="random", input_len=4, output_len=3, seed=3)
    planned = plan_requests(spec, MODELS, 4000, rate=5.0)
    gaps = [b.at - a.at for a, b in zip(planned, planned[1:], strict=False)]
    assert abs(statistics.mean(gaps) - 0.2) < 0.02
    assert abs(statistics.pstdev(gaps) - 0.2) < 0.03  # exponential: std == mean
    assert all(g >= 0 for g in gaps)
    assert plan_requests(spec, MODELS, 4000, 5.0) == planned  # same seed, same requests (--compare relies on it)
    burst = plan_requests(spec, MODELS, 10, rate=math.inf)
    assert {r.at for r in burst} == {0.0}
    with pytest.raises(SuntoolError, match="--rate"):
        plan_requests(spec, MODELS, 10, rate=0)


def test_zipf_popularity_over_models():
    spec = WorkloadSpec.parse("zipf:1.0", dataset="random", input_len=2, output_len=2, seed=1)
    planned = plan_requests(spec, MODELS, 6000, rate=100.0)
    expected = [1 / k for k in range(1, 5)]
    expected = [e / sum(expected) for e in expected]  # 0.48, 0.24, 0.16, 0.12
    shares = [sum(r.model == m for r in planned) / len(planned) for m in MODELS]
    assert all(abs(s - e) < 0.02 for s, e in zip(shares, expected, strict=True)), shares


def test_prompts_from_the_synthetic_tasks_and_random_words():
    planned = plan_requests(WorkloadSpec(dataset="tasks", seed=0), MODELS, 40, rate=10.0)
    from suntool.evals.tasks import TASKS

    tasks = list(TASKS.values())
    for request in planned:
        index = MODELS.index(request.model)
        prompts = {r["prompt"] for r in tasks[index % len(tasks)].generate(40, index)}
        assert request.prompt in prompts and request.max_tokens >= 8
    fixed = plan_requests(WorkloadSpec(dataset="tasks", output_len=7), MODELS, 5, rate=1.0)
    assert {r.max_tokens for r in fixed} == {7}
    words = plan_requests(WorkloadSpec(dataset="random", input_len=12, output_len=5), MODELS, 5, rate=1.0)
    assert all(len(r.prompt.split()) == 12 and r.max_tokens == 5 for r in words)


def test_percentiles_interpolate():
    result = percentiles([float(v) for v in range(1, 101)])
    assert result["p50"] == pytest.approx(50.5) and result["p90"] == pytest.approx(90.1)
    assert result["p99"] == pytest.approx(99.01) and result["mean"] == pytest.approx(50.5)
    assert math.isnan(percentiles([])["p50"])


def record(model, sent, first, end, tokens, error=None):
    chunks = [first + i * (end - first) / max(tokens - 1, 1) for i in range(tokens)] if first is not None else []
    return RequestRecord(model=model, sent=sent, max_tokens=tokens, chunk_times=chunks, end=end,
                         output_tokens=tokens if error is None else 0, error=error)


def test_summary_latencies_throughput_and_goodput():
    records = [
        record("a", 0.0, 0.5, 2.5, 11),  # TTFT 0.5, TPOT 0.2
        record("b", 1.0, 1.2, 2.2, 11),  # TTFT 0.2, TPOT 0.1
        record("a", 2.0, 4.0, 5.0, 11),  # TTFT 2.0, TPOT 0.1
        record("b", 3.0, None, None, 0, error="HTTP 429: full"),
    ]
    summary = summarize(records, start=0.0, slo=SLO(ttft=1.0, tpot=0.15), config="shared", rate=1.0)
    assert summary.completed == 3 and summary.failed == 1 and summary.duration_s == 5.0
    assert summary.request_throughput == pytest.approx(3 / 5)
    assert summary.output_token_throughput == pytest.approx(33 / 5)
    assert summary.goodput == pytest.approx(1 / 5)  # only the second meets both SLOs
    assert summary.ttft["p50"] == pytest.approx(0.5) and summary.tpot["p50"] == pytest.approx(0.1)
    assert summary.itl["p50"] == pytest.approx(0.1)
    assert summary.per_model["a"]["completed"] == 2 and summary.errors == ("HTTP 429: full",)
    free = summarize(records, start=0.0, slo=SLO(), config="shared", rate=1.0)
    assert free.goodput == pytest.approx(3 / 5)


def test_compare_ratios():
    fast = summarize([record("a", 0.0, 0.1, 1.0, 10)], 0.0, SLO(), config="shared", rate=2.0)
    slow = summarize([record("a", 0.0, 0.2, 2.0, 10)], 0.0, SLO(), config="dedicated", rate=2.0)
    ratios = compare_ratios(fast, slow)
    assert ratios["output_token_throughput"] == pytest.approx(2.0)
    assert ratios["tpot_p50"] == pytest.approx(0.5) and ratios["ttft_p50"] == pytest.approx(0.5)
    nothing = summarize([record("a", 0.0, 5.0, 9.0, 10)], 0.0, SLO(ttft=1.0), config="dedicated", rate=2.0)
    assert compare_ratios(fast, nothing)["goodput"] == math.inf  # the baseline met no SLO
