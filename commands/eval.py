"""`suntool eval`: Evaluate artifacts with lm-eval on the bundled offline tasks."""

from __future__ import annotations

import typer

from suntool.commands._ui import not_built


def eval_command(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """Evaluate artifacts with lm-eval on the bundled offline tasks. [not built yet]"""
    not_built("eval", issue=6)


def register(app: typer.Typer) -> None:
    settings = {"ignore_unknown_options": True, "allow_extra_args": True}
    app.command("eval", context_settings=settings)(eval_command)
