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


@pytest.mark.parametrize(
    ("text", "agents", "mode"),
    [("agents:4", 4, "pipeline"), ("agents:2:pipeline", 2, "pipeline"), ("agents:3:parallel", 3, "parallel")],
)
def test_agents_workload_parsing(text, agents, mode):
    spec = WorkloadSpec.parse(text, dataset="random", input_len=20)
    assert (spec.popularity, spec.agents, spec.agent_mode, spec.input_len) == ("agents", agents, mode, 20)
    assert spec.describe().startswith(f"agents:{agents}:{mode}, 20-word shared contexts")


@pytest.mark.parametrize(
    ("bad", "needle"),
    [("agents", "K >= 1"), ("agents:0", "K >= 1"), ("agents:x", "K >= 1"), ("agents:-2", "K >= 1"),
     ("agents:2.5", "K >= 1"), ("agents:2:both", "pipeline (in turn) or parallel"), ("agent:2", "agents:K")],
)
def test_agents_workload_errors_name_the_fix(bad, needle):
    with pytest.raises(SuntoolError, match="--workload") as info:
        WorkloadSpec.parse(bad)
    assert needle in str(info.value)


def test_agents_pipeline_plan_chains_each_context_through_k_models():
    from suntool.bench.workload import AGENT_HEADER

    spec = WorkloadSpec.parse("agents:3", dataset="random", input_len=40, output_len=6, seed=5)
    planned = plan_requests(spec, ["a", "b", "c", "d"], 5, rate=2.0)  # -n counts shared contexts
    assert len(planned) == 15
    arrivals = []
    for session in range(5):
        first, second, third = planned[3 * session: 3 * session + 3]
        assert [r.session for r in (first, second, third)] == [session] * 3
        assert [r.model for r in (first, second, third)] == ["a", "b", "c"]  # agent k -> models[k]
        assert first.after is None and second.after == 3 * session and third.after == 3 * session + 1
        assert first.prompt.endswith(AGENT_HEADER.format(number=1))
        assert len(first.prompt.split()) == 40 + 3  # the context, then "### Agent 1"
        assert second.prompt == AGENT_HEADER.format(number=2) and third.prompt == AGENT_HEADER.format(number=3)
        assert first.at == second.at == third.at and {r.max_tokens for r in (first, second, third)} == {6}
        arrivals.append(first.at)
    assert arrivals == sorted(arrivals) and arrivals[0] > 0  # Poisson arrivals of contexts
    assert len({planned[3 * s].prompt for s in range(5)}) == 5  # a new context per session
    assert plan_requests(spec, ["a", "b", "c", "d"], 5, rate=2.0) == planned  # reproducible


def test_agents_parallel_plan_sends_one_context_to_k_models_at_once():
    spec = WorkloadSpec.parse("agents:4:parallel", dataset="random", input_len=12, seed=1)
    planned = plan_requests(spec, ["a", "b"], 2, rate=math.inf)
    assert len(planned) == 8 and all(r.after is None and r.at == 0.0 for r in planned)
    assert [r.model for r in planned[:4]] == ["a", "b", "a", "b"]  # K > models: the models repeat in order
    for session in range(2):
        group = planned[4 * session: 4 * session + 4]
        context = group[0].prompt.rsplit("\n\n### Agent 1", 1)[0]
        assert all(r.prompt == f"{context}\n\n### Agent {k + 1}\n" for k, r in enumerate(group))
        assert {r.session for r in group} == {session} and {r.max_tokens for r in group} == {32}


def test_agents_contexts_from_the_synthetic_tasks():
    spec = WorkloadSpec.parse("agents:2", dataset="tasks", input_len=150, output_len=4)
    planned = plan_requests(spec, ["a", "b"], 3, rate=1.0)
    firsts = [r for r in planned if r.after is None]
    assert len(firsts) == 3
    for request in firsts:
        assert len(request.prompt.split()) == 150 + 3
    assert "Question:" in " ".join(r.prompt for r in firsts) or "def " in " ".join(r.prompt for r in firsts)


def test_sessions_summary_and_ratios():
    def rec(session, sent, end, tokens=5):
        base = record("a", sent, sent + 0.1, end, tokens)
        base.session = session
        return base

    records = [rec(0, 0.0, 1.0), rec(0, 1.0, 3.0), rec(1, 0.5, 1.5), rec(1, 1.5, 2.0),
               rec(2, 1.0, 2.0), rec(2, 2.0, None, 0)]
    records[-1].error = "HTTP 500: boom"
    summary = summarize(records, start=0.0, slo=SLO(), config="shared", rate=1.0)
    assert summary.sessions["count"] == 3 and summary.sessions["completed"] == 2  # session 2 lost an agent
    assert summary.sessions["latency"]["p50"] == pytest.approx(2.25)  # (3.0 + 1.5) / 2
    assert summary.sessions["throughput"] == pytest.approx(2 / 3.0)
    assert summary.e2e["p95"] >= summary.e2e["p90"]
    slower = summarize([rec(0, 0.0, 4.0), rec(0, 4.0, 9.0)], 0.0, SLO(), config="dedicated", rate=1.0)
    ratios = compare_ratios(summary, slower)
    assert ratios["session_latency_p95"] == pytest.approx(summary.sessions["latency"]["p95"] / 9.0)
    assert ratios["session_throughput"] == pytest.approx((2 / 3.0) / (1 / 9.0))
    plain = summarize([record("a", 0.0, 0.1, 1.0, 10)], 0.0, SLO(), config="shared", rate=1.0)
    assert plain.sessions is None and "session_throughput" not in compare_ratios(plain, plain)


METRICS = """# HELP suntool_prefix_cache_hit_tokens_total Prompt tokens served from the prefix cache.
# TYPE suntool_prefix_cache_hit_tokens_total gauge
suntool_prefix_cache_hit_tokens_total 448.0
suntool_generation_tokens_total{model="a"} 10.0
suntool_generation_tokens_total{model="b c}"} 5.0
suntool_requests_total{model="a",finish_reason="length"} 3 1700000000000
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 1.6e+02
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 40
bogus line without a value
weird_value NaN
"""


def test_prometheus_parsing_and_prefix_cache_hits():
    from suntool.bench.metrics import counter_delta, parse_prometheus, prefix_cache_hit_tokens

    metrics = parse_prometheus(METRICS)
    assert metrics["suntool_prefix_cache_hit_tokens_total"] == 448.0
    assert metrics["suntool_generation_tokens_total"] == 15.0  # summed over label sets, quoted "}" included
    assert metrics["suntool_requests_total"] == 3.0  # a timestamp is not the value
    assert metrics["vllm:prefix_cache_hits_total"] == 200.0
    assert "bogus" not in metrics and math.isnan(metrics["weird_value"])
    assert prefix_cache_hit_tokens(metrics) == 448.0  # suntool's name first
    assert prefix_cache_hit_tokens({"vllm:prefix_cache_hits_total": 7.0}) == 7.0
    assert prefix_cache_hit_tokens({"other": 1.0}) is None and prefix_cache_hit_tokens(None) is None
    assert counter_delta(100.0, 548.0) == 448.0
    assert counter_delta(None, 5.0) is None and counter_delta(1.0, math.nan) is None
