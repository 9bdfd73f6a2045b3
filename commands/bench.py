"""`suntool bench URL | --local ART...`: TTFT/TPOT/ITL/throughput/goodput under Poisson, Zipf load."""

from __future__ import annotations

import typer

from suntool.commands._ui import console, err_console


def _rate(text: str) -> float:
    from suntool.errors import SuntoolError

    try:
        return float("inf") if text.lower() in ("inf", "infinity") else float(text)
    except ValueError:
        raise SuntoolError(f"--rate must be a number of requests per second or 'inf', got {text!r}") from None


def bench_command(
    targets: list[str] = typer.Argument(..., help="A server URL, or with --local the artifacts to serve."),
    local: bool = typer.Option(False, "--local", help="Start `suntool serve --local TARGETS...` and bench it."),
    rate: list[str] = typer.Option(["4"], "--rate", help="Poisson request rate per second, or inf (repeatable)."),
    num_requests: int = typer.Option(
        100, "--num-requests", "-n", min=1, help="Requests per rate (agents:K: shared contexts, K requests each)."
    ),
    workload: str = typer.Option(
        "zipf:1.0", "--workload",
        help="zipf:ALPHA or uniform (model popularity), or agents:K[:pipeline|parallel]: each shared context "
        "(--input-len words) goes to K models in turn or at once.",
    ),
    dataset: str = typer.Option(
        "tasks", "--dataset", help="tasks (synthetic task prompts, one task per model) or random (--input-len words)."
    ),
    input_len: int = typer.Option(128, "--input-len", min=1, help="Prompt length for --dataset random."),
    output_len: int = typer.Option(None, "--output-len", min=1, help="Tokens per answer (default: from the task)."),
    slo_ttft: float = typer.Option(None, "--slo-ttft", min=0, help="Goodput SLO on time to first token (s)."),
    slo_tpot: float = typer.Option(None, "--slo-tpot", min=0, help="Goodput SLO on time per output token (s)."),
    compare: bool = typer.Option(False, "--compare", help="Run shared, then the --no-share baseline; print ratios."),
    no_share: bool = typer.Option(False, "--no-share", help="With --local: bench only the --no-share baseline."),
    decode_workers: int = typer.Option(
        None, "--decode-workers", min=1, help="Local server's decode workers (--compare default: one per model)."
    ),
    serve_arg: list[str] = typer.Option(None, "--serve-arg", help="Extra flag for the local server (repeatable)."),
    out: str = typer.Option("bench-out", "--out", "-o", help="Directory for bench.json and bench.png."),
    seed: int = typer.Option(0, "--seed", help="Seed of arrivals, model choice and prompts."),
    api_key: str = typer.Option(None, "--api-key", envvar="SUNTOOL_API_KEY", help="Bearer key for the server."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Warm-up requests per model before measuring."),
    profile: str = typer.Option(
        None, "--profile", help="With --local: measure step costs for `suntool simulate --profile` into this JSON."
    ),
    profile_batches: str = typer.Option("1,2,4,8,16,32", "--profile-batches", help="Decode batch sizes to profile."),
    profile_contexts: str = typer.Option("32,128,384", "--profile-contexts", help="Context lengths to profile."),
) -> None:
    """Benchmark a server: TTFT/TPOT/throughput under Poisson, Zipf load."""
    from pathlib import Path

    from suntool.serve import BENCH_PACKAGES, SERVE_PACKAGES, require

    require({**BENCH_PACKAGES, **(SERVE_PACKAGES if local else {})}, "suntool bench")
    from suntool.bench.report import SLO
    from suntool.bench.runner import BenchConfig, run_bench
    from suntool.bench.workload import WorkloadSpec
    from suntool.errors import SuntoolError

    if profile:
        _profile(targets, local, profile, profile_batches, profile_contexts, decode_workers, serve_arg)
        return
    if dataset not in ("tasks", "random"):
        raise SuntoolError(f"--dataset must be tasks or random, got {dataset!r}")
    if not local and len(targets) != 1:
        raise SuntoolError("give one server URL, or --local with the artifacts to serve")
    spec = WorkloadSpec.parse(workload, dataset=dataset, input_len=input_len, output_len=output_len, seed=seed)
    config = BenchConfig(
        url=None if local else targets[0], artifacts=tuple(targets) if local else (),
        rates=tuple(_rate(r) for r in rate), num_requests=num_requests, workload=spec,
        slo=SLO(ttft=slo_ttft, tpot=slo_tpot), out=Path(out), compare=compare, no_share=no_share,
        decode_workers=decode_workers, serve_args=tuple(serve_arg or ()), api_key=api_key, warmup=warmup,
    )
    result = run_bench(config, say=lambda message: err_console.print(f"[dim]·[/] {message}", markup=True))
    for ratio in result["compare"]:
        console.print(
            f"shared / dedicated at {ratio['rate']:g} req/s: output tokens/s x{ratio['output_token_throughput']:.2f} "
            f"· goodput x{ratio['goodput']:.2f} · TPOT p50 x{ratio['tpot_p50']:.2f} "
            f"· TTFT p50 x{ratio['ttft_p50']:.2f} · e2e p95 x{ratio['e2e_p95']:.2f}"
            + (f" · sessions/s x{ratio['session_throughput']:.2f} · session latency p95 "
               f"x{ratio['session_latency_p95']:.2f}" if "session_throughput" in ratio else ""),
            markup=False,
        )
    console.print(f"wrote {result['json']} and {result['png']}", markup=False)


def _ints(flag: str, text: str) -> tuple[int, ...]:
    from suntool.errors import SuntoolError

    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SuntoolError(f"{flag} must be comma-separated integers, got {text!r}") from None


def _profile(targets, local, out, batches, contexts, decode_workers, serve_arg) -> None:
    from pathlib import Path

    from suntool.bench.profile import ProfileConfig, measure_profile
    from suntool.commands._ui import step_progress
    from suntool.errors import SuntoolError

    if not local:
        raise SuntoolError("--profile measures the local engine: use it with --local ART")
    if serve_arg:
        raise SuntoolError("--profile takes no --serve-arg: it measures the engine's defaults")
    config = ProfileConfig(artifacts=tuple(targets), out=Path(out), batch_sizes=_ints("--profile-batches", batches),
                           contexts=_ints("--profile-contexts", contexts), decode_workers=decode_workers or 1)
    with step_progress("profiling the local engine") as say:
        result = measure_profile(config, say)
    from rich.table import Table

    decode = result["decode"]
    table = Table(title="decode step (ms) by batch size × context", title_justify="left")
    table.add_column("batch", justify="right")
    for context in decode["contexts"]:
        table.add_column(f"ctx {context}", justify="right")
    for batch, row in zip(decode["batch_sizes"], decode["step_seconds"], strict=True):
        table.add_row(str(batch), *(f"{s * 1e3:.1f}" for s in row))
    console.print(table)
    prefill = ", ".join(f"{p['batch']}×{p['prompt_tokens']}: {p['seconds'] * 1e3:.0f} ms"
                        for p in result["prefill"]["points"])
    console.print(f"prefill: {prefill}", markup=False)
    console.print(f"wrote {out}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
