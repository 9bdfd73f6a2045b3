"""`suntool quantize`: Quantize the shared decode half to 4 bits (QSUN)."""

from __future__ import annotations

import typer

from suntool.commands._ui import not_built


def quantize_command(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """Quantize the shared decode half to 4 bits (QSUN). [not built yet]"""
    not_built("quantize", issue=5)


def register(app: typer.Typer) -> None:
    settings = {"ignore_unknown_options": True, "allow_extra_args": True}
    app.command("quantize", context_settings=settings)(quantize_command)
