"""The simulator on cases with known answers, the roofline's arithmetic, and the CLI's one-line errors."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from suntool.errors import SuntoolError
from suntool.simulate.cluster import ClusterConfig, plan_cluster
from suntool.simulate.costs import Roofline
from suntool.simulate.hardware import device_spec
from suntool.simulate.metrics import SLOTarget, summarize
from suntool.simulate.modelcfg import model_shape
from suntool.simulate.profile import load_profile, parse_profile
from suntool.simulate.runner import CostSource, SimConfig, run_simulation
from suntool.simulate.sim import simulate
from suntool.simulate.workload import SimRequest, WorkloadConfig, make_requests, requests_from_records


@dataclass(frozen=True)
class Fixed:
    """Constant costs: every prefill forward, decode forward and transfer takes a fixed time."""

    prefill_s: float = 0.5
    step_s: float = 0.1
    transfer_s: float = 0.0
    max_batch: int = 8
    max_prefill_tokens: int = 10**9
    capacity: int | None = None
    round_robin: bool = True

    def prefill(self, rows):
        return self.prefill_s

    def decode(self, batch, context_tokens):
        return self.step_s

    def kv_capacity(self, halves, *, decode=True):
        return self.capacity

    def transfer(self, tokens):
        return self.transfer_s


def run(layout, requests, costs, *, models=1, prefill=None, decode=None, cores=None):
    plan = plan_cluster(ClusterConfig(layout=layout, models=models, prefill_devices=prefill, decode_devices=decode))
    return simulate(plan, requests, costs, costs, shared_host_cores=cores)


def test_one_request_ttft_is_prefill_plus_transfer_plus_first_step():
    costs = Fixed(prefill_s=0.5, step_s=0.1, transfer_s=0.2)
    outcome = run("sun", [SimRequest(0, arrival=3.0, model=0, prompt_tokens=100, output_tokens=5)], costs)
    trace = outcome.traces[0]
    # the decode half computes the first token (the `decode` first-token convention)
    assert trace.ttft == pytest.approx(0.5 + 0.2 + 0.1)
    assert trace.tpot == pytest.approx(0.1)
    assert trace.last_token - trace.request.arrival == pytest.approx(0.5 + 0.2 + 5 * 0.1)


def test_saturated_single_instance_runs_batch_per_step_time():
    costs = Fixed(prefill_s=1e-6, step_s=0.1, max_batch=8)
    requests = [SimRequest(i, 0.0, 0, 10, 100) for i in range(64)]
    summary = summarize(run("sun", requests, costs, decode=1), devices=1, slo=SLOTarget())
    # 64 sequences round-robin through batches of 8: only the last steps run part-full
    assert summary.output_token_throughput == pytest.approx(8 / 0.1, rel=3e-3)
    assert summary.mean_decode_batch == pytest.approx(8, rel=3e-3)
    exact = summarize(run("sun", [SimRequest(i, 0.0, 0, 10, 1000) for i in range(8)], costs, decode=1), 1, SLOTarget())
    assert exact.output_token_throughput == pytest.approx(8 / 0.1, rel=1e-6)


def test_without_round_robin_at_most_max_batch_sequences_run():
    costs = Fixed(prefill_s=1e-6, step_s=0.1, max_batch=8, round_robin=False)
    outcome = run("sun", [SimRequest(i, 0.0, 0, 10, 10) for i in range(16)], costs, decode=1)
    firsts = sorted(t.first_token for t in outcome.traces)
    assert firsts[:8] == [pytest.approx(0.1, abs=1e-5)] * 8  # the first eight run
    assert firsts[8:] == [pytest.approx(1.1, abs=1e-5)] * 8  # the rest wait until they finish
    assert max(t.tpot for t in outcome.traces) == pytest.approx(0.1)


def test_kv_capacity_limits_the_batch():
    costs = Fixed(prefill_s=1e-6, step_s=0.1, max_batch=64, capacity=4 * 110)  # four 110-token sequences fit
    requests = [SimRequest(i, 0.0, 0, 10, 100) for i in range(16)]
    outcome = run("sun", requests, costs, decode=1)
    assert max(outcome.decode_batches) == 4
    assert outcome.kv_peak == [pytest.approx(1.0)]


def test_shared_host_cores_are_shared_by_running_forwards():
    costs = Fixed(prefill_s=1.0, step_s=0.1)
    requests = [SimRequest(0, 0.0, 0, 10, 1), SimRequest(1, 0.0, 1, 10, 1)]
    alone = run("dedicated", requests, costs, models=2)  # two devices: both prefills in parallel
    assert [t.prefill_end for t in alone.traces] == [pytest.approx(1.0)] * 2
    one_core = run("dedicated", requests, costs, models=2, cores=1)  # one core: each at half speed
    assert [t.prefill_end for t in one_core.traces] == [pytest.approx(2.0)] * 2
    two_cores = run("dedicated", requests, costs, models=2, cores=2)
    assert [t.prefill_end for t in two_cores.traces] == [pytest.approx(1.0)] * 2


def test_one_dedicated_worker_runs_one_forward_per_model_per_iteration():
    costs = Fixed(prefill_s=1e-6, step_s=0.1)
    requests = [SimRequest(i, 0.0, i, 10, 10) for i in range(4)]
    dedicated = run("dedicated", requests, costs, models=4, prefill=4, decode=1)
    shared = run("sun", requests, costs, models=4, prefill=4, decode=1)
    assert max(t.tpot for t in dedicated.traces) == pytest.approx(0.4)  # four forwards of 0.1 s per token
    assert max(t.tpot for t in shared.traces) == pytest.approx(0.1)  # one forward over all four models


def test_more_devices_never_lower_throughput():
    roof = Roofline(device_spec("H100"), model_shape("Llama-3.1-8B"))
    requests = make_requests(WorkloadConfig(models=4, alpha=1.2, rate=math.inf, requests=200, output_len=64))
    for layout in ("dedicated", "sun"):
        throughputs = []
        for devices in (1, 2, 4, 8):
            plan = plan_cluster(ClusterConfig(layout=layout, models=4, prefill_devices=4, decode_devices=devices,
                                              popularity=tuple(WorkloadConfig(models=4, alpha=1.2).weights())))
            outcome = simulate(plan, requests, roof, roof)
            throughputs.append(summarize(outcome, plan.devices, SLOTarget()).output_token_throughput)
        assert all(b >= a * 0.999 for a, b in zip(throughputs, throughputs[1:], strict=False)), (layout, throughputs)
        assert throughputs[-1] > throughputs[0]


def test_sun_needs_fewer_decode_devices_under_skew_and_qsun_is_faster():
    config = SimConfig(workload=WorkloadConfig(models=4, alpha=1.0, rate=8, requests=200, prompt_len=256,
                                               output_len=64),
                       layouts=("dedicated", "sun", "qsun"), slo=SLOTarget(ttft=2.0, tpot=0.05), search_seconds=10)
    results = {r.layout: r for r in run_simulation(config)}
    assert results["dedicated"].devices_needed == (4, 4)  # the minimum: a prefill and a decoder per model
    assert results["sun"].devices_needed[1] < 4  # one shared pool, sized to the total load
    assert results["qsun"].summary.tpot["p50"] < 0.75 * results["sun"].summary.tpot["p50"]


def test_prefillshare_reuses_prefixes_across_models():
    workload = WorkloadConfig(models=4, alpha=0.0, rate=4, requests=200, prompt_len=64, output_len=16,
                              prefix_len=1024, prefixes=4)
    config = SimConfig(workload=workload, layouts=("sun", "prefillshare"))
    results = {r.layout: r.summary for r in run_simulation(config)}
    # 4 documents: PrefillShare misses each once; SUN's per-model caches miss each once per model
    assert results["prefillshare"].prefix_hit_rate == pytest.approx(1 - 4 / 200)
    assert results["sun"].prefix_hit_rate < results["prefillshare"].prefix_hit_rate
    assert results["prefillshare"].ttft["mean"] < results["sun"].ttft["mean"]


def test_roofline_matches_hand_arithmetic():
    roof = Roofline(device_spec("H100"), model_shape("Llama-3.1-8B"), overhead=0.0)
    shape = model_shape("meta-llama/Llama-3.1-8B")
    assert shape.params == pytest.approx(8.03e9, rel=0.01)
    assert shape.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2  # 128 KiB
    weights = shape.params * 2
    one = roof.decode(1, 1)  # batch 1: memory-bound, the weights once
    assert one == pytest.approx((weights + 2 * shape.kv_bytes_per_token()) / (3.35e12 * 0.8), rel=1e-6)
    assert roof.quantized(4).decode(32, 32 * 1024) < 0.6 * roof.decode(32, 32 * 1024)
    assert roof.prefill([(2048, 0)]) > 4 * roof.prefill([(256, 0)])  # compute-bound: grows with tokens
    assert roof.kv_capacity(1) == int((80e9 * 0.9 - weights) / shape.kv_bytes_per_token())


def test_model_shapes_from_configs_and_artifacts(tmp_path, llama_dir):
    config = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "vocab_size": 1000}
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = model_shape(str(tmp_path))
    assert (shape.kv_heads, shape.head_dim) == (4, 16)
    assert model_shape(str(llama_dir)).layers >= 1


def profile_dict(**decode_overrides):
    decode = {"batch_sizes": [1, 4], "contexts": [32, 128], "step_seconds": [[0.1, 0.2], [0.3, 0.5]]}
    decode.update(decode_overrides)
    return {"format": "suntool-profile", "version": 1, "decode": decode,
            "prefill": {"points": [{"batch": 1, "prompt_tokens": 100, "seconds": 1.0},
                                   {"batch": 2, "prompt_tokens": 100, "seconds": 1.8}]},
            "host": {"cores": 2}}


def test_profile_interpolates_between_measured_points():
    profile = parse_profile(profile_dict())
    assert profile.decode_step(1, 32) == pytest.approx(0.1)
    assert profile.decode_step(4, 128) == pytest.approx(0.5)
    # batch 2.5 is halfway from 1 to 4 (0.2 at context 32, 0.35 at 128); context 80 halfway again
    assert profile.decode_step(2.5, 80) == pytest.approx((0.2 + 0.35) / 2)
    assert profile.prefill(150) == pytest.approx(1.4)
    assert profile.decode_step(8, 32) == pytest.approx(0.3 + (0.3 - 0.1) / 3 * 4)  # linear beyond the grid


@pytest.mark.parametrize("change, message", [
    ({"batch_sizes": None}, "decode.batch_sizes is missing"),
    ({"batch_sizes": [1, 4, 8]}, "one row per batch size"),
    ({"contexts": [128, 32]}, "strictly increasing"),
    ({"step_seconds": [[0.1, -1], [0.3, 0.5]]}, "positive"),
])
def test_bad_profiles_are_one_line_errors(change, message, tmp_path):
    data = profile_dict(**change)
    if data["decode"]["batch_sizes"] is None:
        del data["decode"]["batch_sizes"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SuntoolError, match=message) as err:
        load_profile(path)
    assert "\n" not in str(err.value) and "--profile" in str(err.value)


def test_workload_is_zipf_and_reproducible():
    config = WorkloadConfig(models=4, alpha=1.0, rate=10, requests=4000, seed=1)
    requests = make_requests(config)
    counts = [sum(r.model == m for r in requests) / len(requests) for m in range(4)]
    assert counts == pytest.approx(config.weights(), abs=0.02)
    assert abs(requests[-1].arrival / len(requests) - 0.1) < 0.01
    assert make_requests(config) == requests
    assert {r.arrival for r in make_requests(WorkloadConfig(rate=math.inf, requests=5))} == {0.0}
    replay = requests_from_records([(1.0, 1, 10, 3), (0.5, 0, 20, 4)])
    assert [(r.model, r.prompt_tokens) for r in replay] == [(0, 20), (1, 10)]


@pytest.mark.parametrize("args, message", [
    (["--device", "TPU-v9"], "unknown device"),
    (["--model", "Llama-9-1T"], "unknown model"),
    (["--zipf", "-0.5"], "--zipf"),
    (["--rate", "0"], "--rate"),
    (["--layout", "mesh"], "unknown layout"),
    (["--sweep", "colour=1,2"], "--sweep"),
    (["--model", "Llama-3.1-70B"], "leaves no room"),
])
def test_cli_bad_input_is_one_red_line_exit_2(args, message, capsys):
    from suntool.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "-n", "20", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("pair", [0, -0.5, 3.0, "fast", True])
def test_a_bad_pair_speed_is_a_one_line_error(pair, tmp_path):
    from suntool.simulate.profile import parse_profile

    data = profile_dict()
    data.setdefault("host", {})["pair_speed"] = pair
    with pytest.raises(SuntoolError, match="host.pair_speed"):
        parse_profile(data, tmp_path / "p.json")
    data["host"]["pair_speed"] = 0.55
    assert parse_profile(data).pair_speed == 0.55


def test_cli_profile_with_missing_batch_sizes_exits_2(tmp_path, capsys):
    from suntool.cli import main

    data = profile_dict()
    del data["decode"]["batch_sizes"]
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--profile", str(tmp_path / "p.json")])
    assert exit_info.value.code == 2
    assert "decode.batch_sizes is missing" in capsys.readouterr().err


def test_cli_writes_json_and_sweep_plot(tmp_path):
    from suntool.cli import build_app

    out = tmp_path / "sim"
    result = CliRunner().invoke(build_app(), ["simulate", "--models", "2", "-n", "40", "--rate", "4",
                                              "--layout", "dedicated", "--layout", "sun", "--sweep", "zipf=0,1.5",
                                              "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "simulate.json").read_text())
    rows = doc["sweep"]["rows"]
    assert [row["value"] for row in rows] == [0.0, 1.5]
    assert {layout["layout"] for layout in rows[0]["layouts"]} == {"dedicated", "sun"}
    assert (out / "simulate.png").stat().st_size > 10_000


def test_profile_costs_drive_the_simulation(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile_dict()))
    config = SimConfig(workload=WorkloadConfig(models=2, alpha=0.0, rate=math.inf, requests=8, prompt_len=50,
                                               output_len=20, seed=3),
                       layouts=("dedicated", "sun"), costs=CostSource(profile=str(path)))
    results = {r.layout: r for r in run_simulation(config)}
    assert (results["sun"].prefill_devices, results["sun"].decode_devices) == (2, 1)  # engine threads
    # one forward of 8 (0.66 s at context ~60) beats one forward of 4 per model (2 × 0.36 s)
    assert results["sun"].summary.tpot["p50"] < 0.95 * results["dedicated"].summary.tpot["p50"]


def test_busy_threads_split_the_cores_as_the_engine_does():
    from suntool.simulate.sim import thread_share

    assert thread_share(1, 2, 1.6) == 1.0  # alone: every core
    assert thread_share(2, 2, 2.0) == pytest.approx(0.5)  # perfect scaling: two busy threads halve each
    assert thread_share(2, 2, 1.6) == pytest.approx(1 / 1.6)  # one core each, 1.6x slower than two
    assert thread_share(4, 2, 1.6) == pytest.approx(0.5 / 1.6)  # one thread each, two per core
    assert thread_share(2, 2, 1.0) == 1.0 and thread_share(3, 2, 1.0) == pytest.approx(2 / 3)
    costs = Fixed(prefill_s=1.0, step_s=0.1)
    requests = [SimRequest(0, 0.0, 0, 10, 1), SimRequest(1, 0.0, 1, 10, 1)]
    plan = plan_cluster(ClusterConfig(layout="dedicated", models=2))
    outcome = simulate(plan, requests, costs, costs, shared_host_cores=2, thread_speedup=1.6)
    assert [t.prefill_end for t in outcome.traces] == [pytest.approx(1.6)] * 2


def test_measured_pair_speed_calibrates_how_busy_threads_share():
    from suntool.simulate.sim import thread_share

    # two cores that behave like one (memory-bound forwards, SMT siblings): two at once run at half speed each
    assert thread_share(1, 2, 1.0, 0.5) == 1.0
    assert thread_share(2, 2, 1.0, 0.5) == pytest.approx(0.5)
    assert thread_share(4, 2, 1.0, 0.5) == pytest.approx(0.25)  # the shape beyond two is kept, scaled
    assert thread_share(2, 8, 4.0, 0.7) == pytest.approx(0.7)
    assert thread_share(3, 8, 4.0, 0.7) == pytest.approx(thread_share(3, 8, 4.0) * 0.7 / thread_share(2, 8, 4.0))
    costs = Fixed(prefill_s=1.0, step_s=0.1)
    requests = [SimRequest(0, 0.0, 0, 10, 1), SimRequest(1, 0.0, 1, 10, 1)]
    plan = plan_cluster(ClusterConfig(layout="dedicated", models=2))
    outcome = simulate(plan, requests, costs, costs, shared_host_cores=2, thread_speedup=1.0, pair_speed=0.5)
    assert [t.prefill_end for t in outcome.traces] == [pytest.approx(2.0)] * 2  # no faster than one after another


def test_lengths_from_jsonl_and_bursty_arrivals(tmp_path):
    lengths = tmp_path / "lengths.jsonl"
    records = [{"prompt_tokens": 100, "output_tokens": 7}, {"prompt": "x" * 35, "completion": "abcdefg"}]
    lengths.write_text("".join(json.dumps(r) + "\n" for r in records))  # text: 3.5 characters a token
    requests = make_requests(WorkloadConfig(models=2, rate=5, requests=400, lengths=str(lengths), seed=2))
    assert {(r.prompt_tokens, r.output_tokens) for r in requests} == {(100, 7), (10, 2)}
    fixed = make_requests(WorkloadConfig(models=2, rate=5, requests=10, lengths=str(lengths), output_len=3))
    assert {r.output_tokens for r in fixed} == {3}
    bursty = make_requests(WorkloadConfig(rate=5, requests=4000, arrivals="bursty", burst_cv=3.0))
    gaps = [b.arrival - a.arrival for a, b in zip(bursty, bursty[1:], strict=False)]
    mean = sum(gaps) / len(gaps)
    cv = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5 / mean
    assert mean == pytest.approx(0.2, rel=0.1) and cv == pytest.approx(3.0, rel=0.25)
    lengths.write_text('{"prompt_tokens": 0, "output_tokens": 7}\n')
    with pytest.raises(SuntoolError, match="lengths.jsonl:1"):
        make_requests(WorkloadConfig(lengths=str(lengths)))


def test_cached_prompt_tokens_are_not_prefilled_again():
    roof = Roofline(device_spec("H100"), model_shape("Llama-3.1-8B"))
    cold = run("sun", [SimRequest(0, 0.0, 0, 4096, 2)], roof)
    warm = run("sun", [SimRequest(0, 0.0, 0, 4096, 2, cached_tokens=4000)], roof)
    assert warm.traces[0].prefill_end < 0.2 * cold.traces[0].prefill_end
    assert warm.traces[0].prefill_end == pytest.approx(roof.prefill([(96, 4000)]))


def test_a_serial_host_runs_one_forward_at_a_time_in_order():
    """The local engine with mixed steps: one thread runs every forward, each at full speed."""
    costs = Fixed(prefill_s=1.0, step_s=0.1)
    requests = [SimRequest(0, 0.0, 0, 10, 1), SimRequest(1, 0.0, 1, 10, 1)]
    plan = plan_cluster(ClusterConfig(layout="dedicated", models=2))
    shared = simulate(plan, requests, costs, costs, shared_host_cores=1)
    serial = simulate(plan, requests, costs, costs, shared_host_cores=1, serial_host=True)
    assert [t.prefill_end for t in shared.traces] == [pytest.approx(2.0)] * 2  # processor sharing: both at 2 s
    assert sorted(t.prefill_end for t in serial.traces) == [pytest.approx(1.0), pytest.approx(2.0)]
    # the two decode forwards queue behind the second prefill: back to back, 2.0-2.1 and 2.1-2.2
    assert sorted(t.last_token for t in serial.traces) == [pytest.approx(2.1), pytest.approx(2.2)]


@pytest.mark.parametrize("mixed", ["yes", 1])
def test_a_profile_says_whether_its_engine_ran_mixed_steps(mixed, tmp_path):
    data = profile_dict()
    assert parse_profile(data).mixed_steps is False  # profiles written before the field: prefill threads
    data.setdefault("engine", {})["mixed_steps"] = True
    assert parse_profile(data).mixed_steps is True
    data["engine"]["mixed_steps"] = mixed
    with pytest.raises(SuntoolError, match="engine.mixed_steps"):
        parse_profile(data, tmp_path / "p.json")
