"""`suntool serve`: Serve artifacts over an OpenAI-compatible API with a shared decode pool."""

from __future__ import annotations

import typer

from suntool.commands._ui import not_built


def serve_command(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """Serve artifacts over an OpenAI-compatible API with a shared decode pool. [not built yet]"""
    not_built("serve", issue=8)


def register(app: typer.Typer) -> None:
    settings = {"ignore_unknown_options": True, "allow_extra_args": True}
    app.command("serve", context_settings=settings)(serve_command)
