"""Shared terminal helpers for the command modules: consoles, progress, wide tables."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def step_progress(title: str) -> Iterator[Callable[[str], None]]:
    """A rich spinner with elapsed time; yields `say(message)` that updates its line."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    quiet_transformers()

    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(title, total=None)

        def say(message: str) -> None:
            progress.console.print(f"[dim]·[/] {message}")
            progress.update(task, description=message)

        yield say


def print_wide(renderable) -> None:
    """Print a table at its natural width (wider than the terminal if need be), never squeezed into '…'."""
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update_width(10_000), renderable).maximum
    if natural <= console.width:
        console.print(renderable)
    else:
        Console(file=console.file, width=natural, highlight=False).print(renderable)


def quiet_transformers() -> None:
    """Silence transformers' own tqdm bars and advisory logs; suntool shows its own progress."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
