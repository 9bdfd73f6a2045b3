"""`suntool bench`: Benchmark a server: TTFT/TPOT/throughput under Poisson, Zipf load."""

from __future__ import annotations

import typer

from suntool.commands._ui import not_built


def bench_command(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """Benchmark a server: TTFT/TPOT/throughput under Poisson, Zipf load. [not built yet]"""
    not_built("bench", issue=8)


def register(app: typer.Typer) -> None:
    settings = {"ignore_unknown_options": True, "allow_extra_args": True}
    app.command("bench", context_settings=settings)(bench_command)
