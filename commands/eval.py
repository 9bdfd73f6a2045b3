"""`suntool eval ART... --tasks T1,T2`: lm-eval on split artifacts, one comparison table.

When stdout is not a terminal, progress is plain lines at a steady interval: requests done/total of
the current lm-eval call (loglikelihood or generate_until), tokens/s, ETA (`_ui.RequestProgress`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from suntool.commands._ui import RequestProgress, console, plain_progress, print_wide, step_progress


def eval_command(
    artifacts: list[str] = typer.Argument(..., help="Artifacts, HF checkpoints or built-in names (smollm2-135m)."),
    tasks: str = typer.Option(..., "--tasks", help="Comma-separated tasks, e.g. suntool_arith,suntool_arith_mc."),
    limit: int = typer.Option(None, "--limit", help="Evaluate only the first N documents of each task."),
    num_fewshot: int = typer.Option(None, "--num-fewshot"),
    output: Path = typer.Option(None, "--output", "-o", help="Write results.json per artifact + summary.csv/.md here."),
    log_samples: bool = typer.Option(False, "--log-samples", help="Also write every sample (needs --output)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    dtype: str = typer.Option("float32", help="Load the halves as float32, bfloat16 or float16."),
    include_path: Path = typer.Option(None, "--include-path", help="Extra directory of lm-eval task YAMLs."),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch"),
    n_samples: int = typer.Option(1, "--n", help="HumanEval: sample N completions per problem, report pass@k, k<=N."),
    temperature: float = typer.Option(None, "--temperature", help="Sampling temperature with --n (default 0.8)."),
    cache: Path = typer.Option(None, "--cache", help="Response-cache directory: a re-run resumes where it stopped."),
    engine: bool = typer.Option(False, "--engine", help="Generate on suntool's serving engine (all requests at once, "
                                "continuous batching): faster generation tasks, same greedy answers."),
) -> None:
    """Evaluate artifacts with lm-eval (the `suntool` model: prefill half → K/V → decode half)."""
    from rich.markup import escape
    from rich.table import Table

    from suntool.errors import SuntoolError
    from suntool.evaluate import EvalConfig, format_metric, run_eval

    if log_samples and output is None:
        raise SuntoolError("--log-samples needs --output DIR to write the samples to")
    config = EvalConfig(
        artifacts=tuple(artifacts), tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()), limit=limit,
        num_fewshot=num_fewshot, output=output, log_samples=log_samples, batch_size=batch_size, dtype=dtype,
        include_path=include_path, allow_mismatch=allow_mismatch, n_samples=n_samples, temperature=temperature,
        cache=cache, engine=engine,
    )
    with step_progress("evaluating") as say:
        report = run_eval(config, progress=say, on_requests=RequestProgress("eval") if plain_progress() else None)
    table = Table(show_header=True, header_style="bold")
    table.add_column("artifact", no_wrap=True)
    for column in report.columns:
        task, _, metric = column.partition("/")
        metric, _, filter_name = metric.partition("[")  # "exact_match[strict-match]": the filter on its own line
        header = f"{task}\n{metric}" + (f"\n[{filter_name}" if filter_name else "")
        table.add_column(escape(header), justify="right", no_wrap=True)  # unescaped, rich ate "[strict-match]"
    for name, metrics in report.rows.items():
        table.add_row(name, *(format_metric(metrics.get(column)) for column in report.columns))
    print_wide(table)
    if output is not None:
        console.print(f"[green]wrote[/] {output}/summary.md, summary.csv and one results.json per artifact")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
