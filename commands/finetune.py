"""`suntool finetune`: Fine-tune the task half of an artifact (SUN, PrefillShare, full, LoRA, DropBP)."""

from __future__ import annotations

import typer

from suntool.commands._ui import not_built


def finetune_command(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """Fine-tune the task half of an artifact (SUN, PrefillShare, full, LoRA, DropBP). [not built yet]"""
    not_built("finetune", issue=4)


def register(app: typer.Typer) -> None:
    settings = {"ignore_unknown_options": True, "allow_extra_args": True}
    app.command("finetune", context_settings=settings)(finetune_command)
