"""`suntool bench` end to end on tiny models: against a URL, and `--local --compare` from the CLI."""

from __future__ import annotations

import json

import pytest

from suntool.bench.report import SLO
from suntool.bench.runner import BenchConfig, run_bench
from suntool.bench.workload import WorkloadSpec
from suntool.cli import main
from suntool.serve.app import BackgroundServer
from suntool.serve.engine import Engine
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


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "http://127.0.0.1:9", "--compare"], "--compare"),
        (["bench", "http://127.0.0.1:9", "--workload", "pareto"], "--workload"),
        (["bench", "http://127.0.0.1:9", "--rate", "fast"], "--rate"),
        (["bench", "http://127.0.0.1:9", "-n", "3"], "cannot reach"),
    ],
)
def test_bench_user_errors(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and needle in err
