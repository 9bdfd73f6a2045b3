"""`suntool simulate`: how many devices do N task models need, with dedicated P/D, SUN, QSUN, PrefillShare?"""

from __future__ import annotations

import typer

from suntool.commands._ui import console, err_console, print_wide


def _rate(text: str) -> float:
    from suntool.errors import SuntoolError

    try:
        return float("inf") if text.lower() in ("inf", "infinity") else float(text)
    except ValueError:
        raise SuntoolError(f"--rate must be a number of requests per second or 'inf', got {text!r}") from None


def _sweep(text: str) -> tuple[str, list[float]]:
    from suntool.errors import SuntoolError
    from suntool.simulate.runner import SWEEPABLE

    name, _, values = text.partition("=")
    name = name.strip().replace("-", "_")
    try:
        numbers = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        numbers = []
    if name not in SWEEPABLE or not numbers:
        raise SuntoolError(f"--sweep wants PARAM=V1,V2,... with PARAM one of {', '.join(SWEEPABLE)}, got {text!r}")
    return name, numbers


def simulate_command(
    layout: list[str] = typer.Option(None, "--layout", help="dedicated | sun | qsun | prefillshare (repeatable)."),
    models: int = typer.Option(8, "--models", help="Number of task models."),
    zipf: float = typer.Option(1.0, "--zipf", help="Zipf alpha of model popularity (0: uniform)."),
    rate: str = typer.Option("4", "--rate", help="Requests per second, or inf (all at once)."),
    requests: int = typer.Option(500, "--requests", "-n", help="Requests to simulate (searches span 30 s at least)."),
    arrivals: str = typer.Option("poisson", "--arrivals", help="poisson | bursty (gamma gaps, --burst-cv)."),
    burst_cv: float = typer.Option(3.0, "--burst-cv", help="Coefficient of variation of bursty gaps."),
    prompt_len: int = typer.Option(512, "--prompt-len", help="Prompt tokens (without --lengths)."),
    output_len: int = typer.Option(None, "--output-len", help="Output tokens (default 128, or from --lengths)."),
    lengths: str = typer.Option(None, "--lengths", help="JSONL of prompt_tokens/output_tokens, or 'tasks'."),
    prefix_len: int = typer.Option(0, "--prefix-len", help="Tokens of a shared prefix at the start of every prompt."),
    prefixes: int = typer.Option(1, "--prefixes", help="Distinct shared prefixes (documents), drawn uniformly."),
    device: str = typer.Option("H100", "--device", help="Device of the roofline (H100, A100-80GB, ... or custom)."),
    device_bandwidth: float = typer.Option(None, "--device-bandwidth", help="Memory bandwidth, TB/s."),
    device_flops: float = typer.Option(None, "--device-flops", help="Dense bf16 TFLOP/s."),
    device_memory: float = typer.Option(None, "--device-memory", help="Memory, GB."),
    model: str = typer.Option("Llama-3.1-8B", "--model", help="Known name, HF config.json/dir, or artifact."),
    profile: str = typer.Option(None, "--profile", help="Costs from `suntool bench --profile` instead of a roofline."),
    prefill_devices: int = typer.Option(None, "--prefill-devices", help="Prefill instances (default: one per model)."),
    decode_devices: int = typer.Option(None, "--decode-devices", help="Decode instances (default: one per model)."),
    link_gbps: float = typer.Option(400.0, "--link-gbps", help="Prefill→decode KV link, Gb/s (0: free)."),
    overhead_ms: float = typer.Option(2.0, "--overhead-ms", help="Fixed cost per forward on the roofline, ms."),
    max_batch: int = typer.Option(256, "--max-batch", help="Sequences per decode forward on the roofline."),
    slo_ttft: float = typer.Option(None, "--slo-ttft", help="SLO on time to first token, s."),
    slo_tpot: float = typer.Option(None, "--slo-tpot", help="SLO on time per output token, s."),
    search: str = typer.Option(
        "devices", "--search",
        help="With an SLO: devices (fewest devices at --rate), capacity (highest rate on the given devices), "
             "both, or none."),
    search_seconds: float = typer.Option(30.0, "--search-seconds", help="Arrival time each search run spans."),
    sweep: str = typer.Option(None, "--sweep", help="PARAM=V1,V2,...: models, zipf, rate, prompt_len, output_len, "
                                                   "decode_devices."),
    no_prefix_cache: bool = typer.Option(False, "--no-prefix-cache", help="Never reuse prompt K/V."),
    seed: int = typer.Option(0, "--seed", help="Seed of arrivals, model choice and lengths."),
    out: str = typer.Option(None, "--out", "-o", help="Directory for simulate.json (and simulate.png with --sweep)."),
) -> None:
    """Simulate a disaggregated multi-model cluster: dedicated P/D vs SUN vs QSUN vs PrefillShare."""
    from pathlib import Path

    from suntool.errors import SuntoolError
    from suntool.simulate.cluster import LAYOUTS
    from suntool.simulate.metrics import SLOTarget
    from suntool.simulate.report import plot_sweep, report_dict, write_json
    from suntool.simulate.runner import Costs, CostSource, SimConfig, run_simulation
    from suntool.simulate.runner import sweep as run_sweep
    from suntool.simulate.workload import WorkloadConfig

    for flag, value in (("--link-gbps", link_gbps), ("--overhead-ms", overhead_ms)):
        if value < 0:
            raise SuntoolError(f"{flag} must be >= 0, got {value}")
    if search not in ("devices", "capacity", "both", "none"):
        raise SuntoolError(f"--search must be devices, capacity, both or none, got {search!r}")
    if not search_seconds > 0:
        raise SuntoolError(f"--search-seconds must be positive, got {search_seconds}")
    if max_batch < 1:
        raise SuntoolError(f"--max-batch must be at least 1, got {max_batch}")
    layouts = tuple(layout) if layout else tuple(LAYOUTS if not profile else ("dedicated", "sun", "prefillshare"))
    source = CostSource(
        device=device, model=model, profile=profile,
        bandwidth=device_bandwidth * 1e12 if device_bandwidth else None,
        flops=device_flops * 1e12 if device_flops else None, memory=device_memory * 1e9 if device_memory else None,
        link_bandwidth=link_gbps * 1e9 / 8, overhead=overhead_ms / 1e3, max_batch=max_batch,
    )
    workload = WorkloadConfig(
        models=models, alpha=zipf, rate=_rate(rate), requests=requests, arrivals=arrivals, burst_cv=burst_cv,
        prompt_len=prompt_len, output_len=output_len, lengths=lengths, prefix_len=prefix_len, prefixes=prefixes,
        seed=seed,
    )
    config = SimConfig(workload=workload, layouts=layouts, costs=source, prefill_devices=prefill_devices,
                       decode_devices=decode_devices, slo=SLOTarget(slo_ttft, slo_tpot),
                       search=search in ("devices", "both"), capacity=search in ("capacity", "both"),
                       search_seconds=search_seconds, prefix_cache=not no_prefix_cache)
    config.validate()
    parameter, values = _sweep(sweep) if sweep else (None, None)
    costs = Costs(source)
    err_console.print(f"[dim]·[/] costs: {costs.label}", markup=True)
    from suntool.commands._ui import step_progress

    with step_progress("simulating") as say:
        if parameter:
            rows = run_sweep(config, parameter, values, say=say)
        else:
            results = run_simulation(config, costs, say=say)
    if parameter:
        _print_sweep(rows, parameter, config)
        doc = report_dict(config, costs.label, sweep_rows=rows, parameter=parameter)
    else:
        _print_results(results, config)
        doc = report_dict(config, costs.label, results=results)
    if out:
        json_path = Path(out) / "simulate.json"
        write_json(json_path, doc)
        written = [str(json_path)]
        if parameter:
            png = Path(out) / "simulate.png"
            title = f"{costs.label} · {_describe(config, parameter)}"
            plot_sweep(rows, parameter, png, title=title, slo=config.slo.given)
            written.append(str(png))
        console.print(f"wrote {' and '.join(written)}", markup=False)


def _describe(config, swept: str | None = None) -> str:
    w = config.workload
    lengths = w.lengths or f"prompt {w.prompt_len}"
    models = "models swept" if swept == "models" else f"{w.models} models"
    zipf = "zipf swept" if swept == "zipf" else f"zipf {w.alpha:g}"
    rate = "rate swept" if swept == "rate" else f"{w.rate:g} req/s"
    return (f"{models}, {zipf}, {rate} {w.arrivals}, {lengths}, output "
            f"{w.output_len or 'default'}" + (f", SLO TTFT {config.slo.ttft:g}s TPOT {config.slo.tpot:g}s"
                                               if config.slo.ttft and config.slo.tpot else ""))


def _ms(value: float) -> str:
    return f"{value * 1e3:.1f}" if value == value else "–"


def _print_results(results, config) -> None:
    import math

    from rich.table import Table

    from suntool.simulate.report import per_device, ratios_over_dedicated

    ratios = ratios_over_dedicated(results)
    table = Table(title=_describe(config), title_justify="left")
    for name in ("layout", "devices P+D", "out tok/s", "tok/s/dev", "TTFT p50/p99 (ms)", "TPOT p50/p99 (ms)",
                 "SLO met", "KV peak", "batch", "needed P+D", "TPOT p50 there", "max req/s @SLO", "per dev @SLO",
                 "× dedicated"):
        table.add_column(name, justify="left" if name == "layout" else "right")
    for r in results:
        s = r.summary
        searched = config.slo.given and config.search and not config.costs.profile and math.isfinite(
            config.workload.rate)
        needed = f"{r.devices_needed[0]}+{r.devices_needed[1]}" if r.devices_needed else (
            f"> {config.max_devices}" if searched else "–")
        table.add_row(
            r.layout, f"{r.prefill_devices}+{r.decode_devices}", f"{s.output_token_throughput:.0f}",
            f"{s.throughput_per_device:.1f}", f"{_ms(s.ttft['p50'])} / {_ms(s.ttft['p99'])}",
            f"{_ms(s.tpot['p50'])} / {_ms(s.tpot['p99'])}",
            f"{s.slo_attainment:.0%}" if config.slo.given else "–", f"{s.kv_peak:.0%}", f"{s.mean_decode_batch:.1f}",
            needed, _ms(r.at_needed.tpot["p50"]) if r.at_needed else "–",
            f"{r.max_rate:.1f}" if r.max_rate is not None else "–", f"{per_device(r):.1f}",
            f"×{ratios[r.layout]:.2f}" if r.layout in ratios else "–",
        )
    print_wide(table)


def _print_sweep(rows, parameter: str, config) -> None:
    from rich.table import Table

    from suntool.simulate.report import per_device, ratios_over_dedicated

    layouts = [r.layout for r in rows[0]["results"]]
    metric = ("tok/s per device at the highest rate meeting the SLOs" if config.capacity and config.slo.given else
              "tok/s per device needed to meet the SLOs" if config.slo.given and config.search else "tok/s per device")
    table = Table(title=f"{metric} · {_describe(config, parameter)}", title_justify="left")
    table.add_column(parameter, justify="right")
    for layout in layouts:
        table.add_column(layout, justify="right")
    for row in rows:
        ratios = ratios_over_dedicated(row["results"])
        cells = []
        for r in row["results"]:
            needed = f" ({sum(r.devices_needed)} dev)" if r.devices_needed and r.max_rate is None else ""
            needed += f" ({r.max_rate:.0f} req/s)" if r.max_rate is not None else ""
            ratio = f" ×{ratios[r.layout]:.2f}" if r.layout in ratios and r.layout != "dedicated" else ""
            cells.append(f"{per_device(r):.1f}{needed}{ratio}")
        table.add_row(f"{row['value']:g}", *cells)
    print_wide(table)


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)
