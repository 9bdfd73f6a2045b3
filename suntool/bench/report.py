"""Turning request records into numbers, a JSON report and a PNG.

`summarize(records, start, slo)` gives one run's `RunSummary`: TTFT, TPOT, ITL and
end-to-end latency percentiles (p50/p90/p95/p99, seconds), request and output-token
throughput over the run's wall time (first send to last finish), and goodput: requests
per second that finished and met every given SLO (`ttft` and/or `tpot`, seconds; with no
SLO, every finished request counts). Records of an agents workload (with a `session`)
also give `sessions`: a session's latency is its first send to its last agent's end, its
throughput completed sessions (every agent answered) per second. `prefix_cache_hit_tokens`
is filled in by the runner from the server's /metrics. `write_report` writes `bench.json` and `bench.png`
(throughput, TTFT, TPOT and goodput against the request rate, one line per
configuration); `compare_ratios` is what `--compare` prints: shared over dedicated.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class SLO:
    ttft: float | None = None
    tpot: float | None = None

    def met(self, record) -> bool:
        if not record.ok:
            return False
        if self.ttft is not None and (record.ttft is None or record.ttft > self.ttft):
            return False
        return not (self.tpot is not None and record.tpot is not None and record.tpot > self.tpot)


@dataclass(frozen=True)
class RunSummary:
    config: str  # e.g. "shared" / "dedicated" / "server"
    rate: float
    requests: int
    completed: int
    failed: int
    duration_s: float
    request_throughput: float
    output_token_throughput: float
    goodput: float
    ttft: dict
    tpot: dict
    itl: dict
    e2e: dict
    per_model: dict  # model -> {"requests", "completed", "tpot_p50"}
    errors: tuple[str, ...] = ()
    sessions: dict | None = None  # agents workloads: {"count", "completed", "throughput", "latency"}
    prefix_cache_hit_tokens: float | None = None  # the server's counter over this run (None: not exported)


def percentiles(values: list[float]) -> dict:
    """{"p50", "p90", "p95", "p99", "mean"} by linear interpolation; NaN when there is nothing to measure."""
    if not values:
        return {**{f"p{p}": math.nan for p in PERCENTILES}, "mean": math.nan}
    ordered = sorted(values)
    out = {}
    for p in PERCENTILES:
        k = (len(ordered) - 1) * p / 100
        lo, hi = math.floor(k), math.ceil(k)
        out[f"p{p}"] = ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
    out["mean"] = sum(ordered) / len(ordered)
    return out


def summarize(records, start: float, slo: SLO, *, config: str, rate: float) -> RunSummary:
    done = [r for r in records if r.ok]
    ends = [r.end for r in done]
    duration = (max(ends) - start) if ends else math.nan
    per_model = {}
    for model in sorted({r.model for r in records}):
        mine = [r for r in records if r.model == model]
        ok = [r for r in mine if r.ok]
        per_model[model] = {"requests": len(mine), "completed": len(ok),
                            "tpot_p50": percentiles([r.tpot for r in ok if r.tpot is not None])["p50"]}
    return RunSummary(
        config=config, rate=rate, requests=len(records), completed=len(done), failed=len(records) - len(done),
        duration_s=duration,
        request_throughput=len(done) / duration if done else 0.0,
        output_token_throughput=sum(r.output_tokens for r in done) / duration if done else 0.0,
        goodput=sum(slo.met(r) for r in done) / duration if done else 0.0,
        ttft=percentiles([r.ttft for r in done if r.ttft is not None]),
        tpot=percentiles([r.tpot for r in done if r.tpot is not None]),
        itl=percentiles([gap for r in done for gap in r.itls]),
        e2e=percentiles([r.e2e for r in done]),
        per_model=per_model,
        errors=tuple(sorted({r.error for r in records if r.error})[:5]),
        sessions=_sessions(records, duration),
    )


def _sessions(records, duration: float) -> dict | None:
    """Per shared context (agents workloads): latency from its first send to its last end; None without sessions."""
    groups: dict[int, list] = {}
    for record in records:
        if getattr(record, "session", None) is not None:
            groups.setdefault(record.session, []).append(record)
    if not groups:
        return None
    complete = [group for group in groups.values() if all(r.ok for r in group)]
    latencies = [max(r.end for r in group) - min(r.sent for r in group) for group in complete]
    return {"count": len(groups), "completed": len(complete),
            "throughput": len(complete) / duration if complete else 0.0, "latency": percentiles(latencies)}


def compare_ratios(shared: RunSummary, dedicated: RunSummary) -> dict:
    """shared / dedicated for throughput and goodput; latency ratios the same way (lower is better)."""

    def ratio(a, b):
        if math.isnan(a) or math.isnan(b):
            return math.nan
        if b == 0:
            return math.inf if a > 0 else math.nan
        return a / b

    ratios = {
        "rate": shared.rate,
        "output_token_throughput": ratio(shared.output_token_throughput, dedicated.output_token_throughput),
        "request_throughput": ratio(shared.request_throughput, dedicated.request_throughput),
        "goodput": ratio(shared.goodput, dedicated.goodput),
        "tpot_p50": ratio(shared.tpot["p50"], dedicated.tpot["p50"]),
        "ttft_p50": ratio(shared.ttft["p50"], dedicated.ttft["p50"]),
        "e2e_p95": ratio(shared.e2e["p95"], dedicated.e2e["p95"]),
        "e2e_p99": ratio(shared.e2e["p99"], dedicated.e2e["p99"]),
    }
    if shared.sessions and dedicated.sessions:
        ratios["session_throughput"] = ratio(shared.sessions["throughput"], dedicated.sessions["throughput"])
        ratios["session_latency_p95"] = ratio(shared.sessions["latency"]["p95"], dedicated.sessions["latency"]["p95"])
    return ratios


def _clean(value):
    """Strict JSON: NaN (nothing measured) becomes null, an infinite rate the string "inf"."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_report(out_dir: Path, meta: dict, runs: list[RunSummary], comparisons: list[dict]) -> tuple[Path, Path]:
    """Write bench.json and bench.png into `out_dir`; returns their paths."""
    from suntool.atomic import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"meta": meta, "runs": [asdict(run) for run in runs], "compare": comparisons}
    json_path, png_path = out_dir / "bench.json", out_dir / "bench.png"
    atomic_write_text(json_path, json.dumps(_clean(report), indent=2) + "\n")
    plot(runs, png_path, title=meta.get("title", "suntool bench"))
    return json_path, png_path


def plot(runs: list[RunSummary], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [
        (axes[0][0], "output tokens/s", lambda r: [r.output_token_throughput]),
        (axes[0][1], "TTFT p50 / p99 (s)", lambda r: [r.ttft["p50"], r.ttft["p99"]]),
        (axes[1][0], "TPOT p50 / p99 (s)", lambda r: [r.tpot["p50"], r.tpot["p99"]]),
        (axes[1][1], "goodput (req/s)", lambda r: [r.goodput]),
    ]
    configs = list(dict.fromkeys(r.config for r in runs))
    rates = sorted({r.rate for r in runs})
    position = {rate: i for i, rate in enumerate(rates)}
    labels = ["inf" if math.isinf(rate) else f"{rate:g}" for rate in rates]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, label, values in panels:
        for number, config in enumerate(configs):
            mine = sorted((r for r in runs if r.config == config), key=lambda r: r.rate)
            xs = [position[r.rate] for r in mine]
            series = list(zip(*(values(r) for r in mine), strict=True))
            for index, ys in enumerate(series):
                ax.plot(xs, ys, marker="o", color=colors[number % len(colors)],
                        linestyle="-" if index == 0 else "--", label=config if index == 0 else f"{config} p99")
        ax.set_title(label)
        ax.set_xticks(range(len(rates)), labels)
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_run(run: RunSummary) -> str:
    ms = 1000.0
    line = (
        f"{run.config:>9} rate {run.rate:g}/s: {run.completed}/{run.requests} ok in {run.duration_s:.1f}s · "
        f"{run.output_token_throughput:.1f} tok/s · {run.request_throughput:.2f} req/s · goodput {run.goodput:.2f} · "
        f"TTFT p50 {run.ttft['p50'] * ms:.0f} p99 {run.ttft['p99'] * ms:.0f} ms · "
        f"TPOT p50 {run.tpot['p50'] * ms:.1f} p99 {run.tpot['p99'] * ms:.1f} ms · "
        f"ITL p50 {run.itl['p50'] * ms:.1f} ms · e2e p95 {run.e2e['p95']:.2f} p99 {run.e2e['p99']:.2f} s"
    )
    if run.sessions:
        line += (f" · sessions {run.sessions['completed']}/{run.sessions['count']} "
                 f"{run.sessions['throughput']:.2f}/s, latency p50 {run.sessions['latency']['p50']:.2f} "
                 f"p95 {run.sessions['latency']['p95']:.2f} s")
    if run.prefix_cache_hit_tokens is not None:
        line += f" · prefix-cache hit tokens {run.prefix_cache_hit_tokens:.0f}"
    return line
