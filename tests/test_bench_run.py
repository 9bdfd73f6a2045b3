"""`suntool bench` end to end on tiny models: against a URL, and `--local --compare` from the CLI."""

from __future__ import annotations

import json

import pytest

from suntool.bench.report import SLO
from suntool.bench.runner import BenchConfig, run_bench
from suntool.bench.workload import WorkloadSpec
from suntool.cli import main
from suntool.errors import SuntoolError
from suntool.serve.app import BackgroundServer
from suntool.serve.engine import Engine, EngineConfig
from tests.test_serve_engine import make_task_artifacts


@pytest.fixture(scope="module")
def artifacts(tiny_checkpoints, tmp_path_factory):
    return make_task_artifacts(tiny_checkpoints["llama"], tmp_path_factory.mktemp("bench"), ["t1", "t2", "t3"])


def test_bench_against_a_url_writes_json_and_png(artifacts, tmp_path):
    engine = Engine.from_artifacts(artifacts)
    try:
        with BackgroundServer(engine) as server:
            config = BenchConfig(url=server.url, rates=(50.0, float("inf")), num_requests=12, out=tmp_path,
                                 workload=WorkloadSpec.parse("zipf:1.0", output_len=6, seed=2),
                                 slo=SLO(ttft=30.0))
            result = run_bench(config)
    finally:
        engine.close()
    report = json.loads(result["json"].read_text())  # strict JSON: no NaN/Infinity
    assert [run["rate"] for run in report["runs"]] == [50.0, "inf"]
    for run in report["runs"]:
        assert run["completed"] == 12 and run["failed"] == 0
        assert run["output_token_throughput"] > 0 and run["goodput"] > 0
        assert run["ttft"]["p50"] > 0 and run["tpot"]["p99"] >= run["tpot"]["p50"] > 0
        assert sum(m["requests"] for m in run["per_model"].values()) == 12
    assert result["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert engine.stats().generated_tokens >= 2 * 12 * 6


def test_bench_local_compare_prints_the_ratio(artifacts, tmp_path, capsys):
    args = ["bench", "--local", *map(str, artifacts), "--compare", "--rate", "inf", "-n", "9", "--output-len", "5",
            "--dataset", "random", "--input-len", "8", "-o", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    assert exit_info.value.code == 0, out.err
    assert "shared / dedicated at inf req/s: output tokens/s x" in out.out
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [run["config"] for run in report["runs"]] == ["shared", "dedicated"]
    assert all(run["completed"] == 9 for run in report["runs"])
    assert report["compare"][0]["output_token_throughput"] > 0


@pytest.fixture(scope="module")
def prefillshare_artifacts(tiny_checkpoints, tmp_path_factory):
    return make_task_artifacts(tiny_checkpoints["llama"], tmp_path_factory.mktemp("agents"), ["p1", "p2", "p3"],
                               mode="prefillshare")


def agents_bench(artifacts, out, *, share: bool, workload: str = "agents:3") -> dict:
    engine = Engine.from_artifacts(artifacts, config=EngineConfig(share=share, block_size=4))
    try:
        with BackgroundServer(engine) as server:
            config = BenchConfig(url=server.url, rates=(float("inf"),), num_requests=2, out=out, warmup=0,
                                 workload=WorkloadSpec.parse(workload, dataset="random", input_len=40, output_len=4))
            run_bench(config)
    finally:
        engine.close()
    return json.loads((out / "bench.json").read_text())["runs"][0]


def test_agents_pipeline_reads_cross_model_prefix_hits_from_metrics(prefillshare_artifacts, tmp_path):
    shared = agents_bench(prefillshare_artifacts, tmp_path / "shared", share=True)
    assert shared["requests"] == 6 and shared["completed"] == 6
    assert shared["sessions"]["count"] == 2 and shared["sessions"]["completed"] == 2
    assert shared["sessions"]["latency"]["p95"] >= shared["e2e"]["p95"] > 0
    # agents 2 and 3 of each context run on other models; PrefillShare's one prefill half lets them reuse the
    # whole previous prompt (40+ tokens, block size 4) from the prefix cache
    assert shared["prefix_cache_hit_tokens"] >= 2 * 2 * 36
    dedicated = agents_bench(prefillshare_artifacts, tmp_path / "dedicated", share=False)
    assert dedicated["completed"] == 6
    assert dedicated["prefix_cache_hit_tokens"] < shared["prefix_cache_hit_tokens"]  # no reuse across models


def test_pipeline_prompts_grow_by_each_answer_and_stop_after_a_failure(prefillshare_artifacts):
    from suntool.bench.client import run_load
    from suntool.bench.workload import PlannedRequest, plan_requests

    spec = WorkloadSpec.parse("agents:3", dataset="random", input_len=30, output_len=5)
    planned = plan_requests(spec, ["p1", "p2", "p3"], 1, float("inf"))
    broken = [PlannedRequest(at=0.0, model="missing", prompt="hello there", max_tokens=3, session=7),
              PlannedRequest(at=0.0, model="p1", prompt=" and", max_tokens=3, session=7, after=0)]
    engine = Engine.from_artifacts(prefillshare_artifacts)
    try:
        with BackgroundServer(engine) as server:
            _, records = run_load(server.url, planned + [replace_after(r, len(planned)) for r in broken])
    finally:
        engine.close()
    first, second, third, missing, skipped = records
    assert all(r.ok and r.output_tokens == 5 for r in (first, second, third))
    for before, after in ((first, second), (second, third)):  # prompt = previous prompt + its answer + header
        assert after.prompt_tokens >= before.prompt_tokens + before.output_tokens
        assert after.sent >= before.end
    assert missing.error.startswith("HTTP 404") or missing.error.startswith("HTTP 400")
    assert skipped.error == "not sent: agent request 3 failed" and skipped.session == 7


def replace_after(request, offset: int):
    from dataclasses import replace

    return replace(request, after=None if request.after is None else request.after + offset)


def test_one_server_per_model_routes_each_model_and_checks_it_is_served(artifacts, tmp_path):
    engine = Engine.from_artifacts(artifacts)
    try:
        with BackgroundServer(engine) as server:
            routes = (("t2", server.url), ("t1", server.url + "/"))
            config = BenchConfig(model_urls=routes, rates=(float("inf"),), num_requests=4, out=tmp_path,
                                 workload=WorkloadSpec.parse("uniform", dataset="random", input_len=6, output_len=3))
            result = run_bench(config)
            with pytest.raises(SuntoolError, match="does not serve model 'nope'"):
                run_bench(BenchConfig(model_urls=(("nope", server.url),), rates=(1.0,), num_requests=1,
                                      out=tmp_path / "x"))
            with pytest.raises(SuntoolError, match="no server URL given for model"):
                run_bench(BenchConfig(model_urls=routes, models=("t1", "t3"), out=tmp_path / "y"))
    finally:
        engine.close()
    run = json.loads(result["json"].read_text())["runs"][0]
    assert run["config"] == "servers" and run["completed"] == 4
    assert set(run["per_model"]) == {"t1", "t2"}  # the models come from the routes, in their order
    assert run["prefix_cache_hit_tokens"] is not None  # one server behind both names: counted once


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "http://127.0.0.1:9", "--compare"], "--compare"),
        (["bench", "http://127.0.0.1:9", "--workload", "pareto"], "--workload"),
        (["bench", "http://127.0.0.1:9", "--workload", "agents:0"], "K >= 1"),
        (["bench", "http://127.0.0.1:9", "--workload", "agents:2:both"], "pipeline (in turn) or parallel"),
        (["bench", "http://127.0.0.1:9", "--rate", "fast"], "--rate"),
        (["bench", "http://127.0.0.1:9", "-n", "3"], "cannot reach"),
    ],
)
def test_bench_user_errors(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and needle in err
