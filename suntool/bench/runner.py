"""`suntool bench` as a library call: against a URL, or local artifacts on a server it starts.

`run_bench(BenchConfig(...), say)` resolves the models (`/v1/models`, or `models` as
given, each checked to be served), plans the same requests for every rate
(`suntool.bench.workload`), warms each model up, runs each rate (`suntool.bench.client`),
reads the prompt tokens the server served from its prefix cache during each run (its
/metrics, before and after), and writes `bench.json` + `bench.png` into `out`. The target
is a `url`, or `model_urls` (one server per model: the client sends each model's requests
to its own server and sums their counters), or `artifacts`: with
`artifacts` it starts `suntool serve --local` itself (a subprocess on a free loopback
port, so the load generator and the server do not share a GIL) and stops it with SIGTERM;
with `compare` it does so twice, shared configuration then the `--no-share` baseline
with the same worker budget and the same requests, and reports shared/dedicated ratios.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from suntool.bench.report import SLO, RunSummary
from suntool.bench.workload import WorkloadSpec
from suntool.errors import SuntoolError

Say = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    url: str | None = None
    artifacts: tuple[str, ...] = ()
    model_urls: tuple[tuple[str, str], ...] = ()  # (model, url): one server per model
    models: tuple[str, ...] = ()  # the models to load, in this order; default: what the server lists
    rates: tuple[float, ...] = (4.0,)
    num_requests: int = 100
    workload: WorkloadSpec = WorkloadSpec()
    slo: SLO = SLO()
    out: Path = Path("bench-out")
    compare: bool = False
    no_share: bool = False  # local server as the --no-share baseline only
    decode_workers: int | None = None  # local server; None: serve's default (compare: one per model)
    serve_args: tuple[str, ...] = ()  # more `suntool serve` flags for the local server
    api_key: str | None = None
    warmup: int = 1  # requests per model before measuring
    timeout: float = 600.0

    def validate(self) -> None:
        if sum(map(bool, (self.url, self.artifacts, self.model_urls))) != 1:
            raise SuntoolError("give one target: a server URL, --local ART..., or one server URL per model")
        names = [model for model, _ in self.model_urls]
        if len(set(names)) != len(names):
            raise SuntoolError(f"each model needs one server URL, got {list(self.model_urls)}")
        if len(set(self.models)) != len(self.models):
            raise SuntoolError(f"models to benchmark must be distinct, got {list(self.models)}")
        if self.compare and not self.artifacts:
            raise SuntoolError("--compare starts the shared and the --no-share server itself: use it with --local")
        if self.compare and self.no_share:
            raise SuntoolError("--compare already runs the --no-share baseline; drop --no-share")
        if not self.rates or any(not r > 0 for r in self.rates):
            raise SuntoolError(f"--rate must be positive (or inf), got {list(self.rates)}")
        if self.num_requests < 1:
            raise SuntoolError(f"--num-requests must be at least 1, got {self.num_requests}")


class LocalServer:
    """`python -m suntool serve --local ...` on a free loopback port, stopped with SIGTERM."""

    def __init__(self, artifacts: tuple[str, ...], args: list[str], say: Say):
        command = [sys.executable, "-m", "suntool", "serve", "--local", *artifacts, "--port", "0", *args]
        self.say = say
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "COLUMNS": "200"})
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if "listening on " in line and self.url is None:
                self.url = line.rsplit("listening on ", 1)[1].strip()
                self._ready.set()
        self._ready.set()

    def __enter__(self) -> LocalServer:
        self._ready.wait(900)
        if self.url is None:
            self.proc.kill()
            tail = "\n".join(self.lines[-10:])
            raise SuntoolError(f"the local server did not start:\n{tail}")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _resolve_models(target: str | dict[str, str], config: BenchConfig) -> list[str]:
    from suntool.bench.client import list_models

    if isinstance(target, str):
        served = {target: list_models(target, api_key=config.api_key)}
        wanted = list(config.models) or served[target]
        where = dict.fromkeys(wanted, target)
    else:
        wanted = list(config.models) or list(target)
        missing = [m for m in wanted if m not in target]
        if missing:
            raise SuntoolError(f"no server URL given for model(s) {', '.join(missing)}")
        where = {m: target[m] for m in wanted}
        served = {url: list_models(url, api_key=config.api_key) for url in dict.fromkeys(where.values())}
    for model, url in where.items():
        if model not in served[url]:
            raise SuntoolError(f"{url} does not serve model {model!r} (it lists {', '.join(served[url])})")
    return wanted


def _prefix_hits(target: str | dict[str, str], api_key: str | None) -> float | None:
    """The prefix-cache hit counter summed over the target's servers; None if any does not export it."""
    from suntool.bench.client import read_metrics
    from suntool.bench.metrics import prefix_cache_hit_tokens

    urls = [target] if isinstance(target, str) else list(dict.fromkeys(target.values()))
    values = [prefix_cache_hit_tokens(read_metrics(url, api_key=api_key)) for url in urls]
    return None if any(v is None for v in values) else sum(values)


def _measure(target: str | dict[str, str], config: BenchConfig, label: str, say: Say) -> list[RunSummary]:
    from suntool.bench.client import run_load
    from suntool.bench.metrics import counter_delta
    from suntool.bench.report import format_run, summarize
    from suntool.bench.workload import plan_requests

    models = _resolve_models(target, config)
    warm = [r for i, m in enumerate(models)
            for r in plan_requests(WorkloadSpec(dataset="random", input_len=16, output_len=4, seed=i), [m],
                                   config.warmup, math.inf)] if config.warmup else []
    if warm:
        _, records = run_load(target, warm, api_key=config.api_key, timeout=config.timeout)
        failed = [r.error for r in records if not r.ok]
        if failed:
            raise SuntoolError(f"warm-up requests to {target} failed: {failed[0]}")
    runs = []
    for rate in config.rates:
        planned = plan_requests(config.workload, models, config.num_requests, rate)
        say(f"{label}: {len(planned)} requests at {rate:g}/s over {len(models)} models ({config.workload.describe()})")
        hits_before = _prefix_hits(target, config.api_key)
        start, records = run_load(target, planned, api_key=config.api_key, timeout=config.timeout)
        run = summarize(records, start, config.slo, config=label, rate=rate)
        run = replace(run, prefix_cache_hit_tokens=counter_delta(hits_before, _prefix_hits(target, config.api_key)))
        say(format_run(run))
        runs.append(run)
    return runs


def run_bench(config: BenchConfig, say: Say | None = None) -> dict:
    """Run the benchmark; returns {"runs", "compare", "json", "png"}."""
    from suntool.bench.report import compare_ratios, write_report

    say = say or (lambda _message: None)
    config.validate()
    runs: list[RunSummary] = []
    if config.url:
        runs += _measure(config.url, config, "server", say)
    elif config.model_urls:
        runs += _measure(dict(config.model_urls), config, "servers", say)
    else:
        layouts = [("shared", []), ("dedicated", ["--no-share"])] if config.compare else (
            [("dedicated", ["--no-share"])] if config.no_share else [("shared", [])])
        workers = config.decode_workers
        if workers is None and config.compare:
            workers = len(config.artifacts)  # equal budget: one decoder per model for the baseline
        for label, flags in layouts:
            args = [*flags, *config.serve_args]
            if workers is not None:
                args += ["--decode-workers", str(workers)]
            say(f"starting the {label} server: suntool serve --local {' '.join(config.artifacts)} {' '.join(args)}")
            with LocalServer(config.artifacts, args, say) as server:
                runs += _measure(server.url, config, label, say)
    comparisons = []
    if config.compare:
        by_rate = {}
        for run in runs:
            by_rate.setdefault(run.rate, {})[run.config] = run
        comparisons = [compare_ratios(pair["shared"], pair["dedicated"]) for pair in by_rate.values()]
    meta = {"url": config.url, "artifacts": list(config.artifacts), "model_urls": dict(config.model_urls),
            "models": list(config.models), "workload": asdict(config.workload),
            "slo": asdict(config.slo), "num_requests": config.num_requests, "decode_workers": config.decode_workers,
            "serve_args": list(config.serve_args), "compare": config.compare,
            "title": f"suntool bench · {config.workload.describe()}"}
    json_path, png_path = write_report(config.out, meta, runs, comparisons)
    return {"runs": runs, "compare": comparisons, "json": json_path, "png": png_path}
