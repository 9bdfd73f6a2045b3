"""Shared terminal helpers for the command modules: consoles, progress, wide tables.

Progress has two forms. On a terminal: rich bars and spinners on stderr. When stdout is not a
terminal (`suntool finetune ... > log`, a batch job, CI), `plain_progress()` is true and the long
commands print plain, flushed lines to stdout instead, at most one every
`SUNTOOL_PROGRESS_INTERVAL` seconds (default 15) plus the first and the last, as training
frameworks do in batch jobs:

    finetune step 12/200 (6%) · loss 1.2345 · 512 tok/s · elapsed 0:01:02 · ETA 0:16:20

`SUNTOOL_PROGRESS=plain|rich` forces a form (`auto`, the default, decides by stdout).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

DEFAULT_INTERVAL_S = 15.0


def plain_progress() -> bool:
    """Whether progress is printed as plain lines (stdout is not a terminal, or SUNTOOL_PROGRESS=plain)."""
    mode = os.environ.get("SUNTOOL_PROGRESS", "auto").strip().lower()
    if mode == "plain":
        return True
    if mode == "rich":
        return False
    try:
        return not sys.stdout.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stdout
        return True


def progress_interval() -> float:
    """Seconds between plain progress lines (SUNTOOL_PROGRESS_INTERVAL, default 15; 0 prints every update)."""
    try:
        return max(0.0, float(os.environ.get("SUNTOOL_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressLines:
    """Plain progress lines for logs: `<what> <unit> done/total (pct) · loss · tok/s · elapsed · ETA`.

    `update(done, ...)` prints when `interval` seconds have passed since the last line, on the
    first update and when `done == total` (or `force=True`); `note(text)` prints `· text` at once.
    The rate behind the ETA is measured from the first update, so a resumed run's ETA counts only
    what it has done itself. Lines go to `stream` (default stdout), flushed.
    """

    def __init__(self, what: str, total: int | None, unit: str = "step", *, interval: float | None = None,
                 stream=None, clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.unit = what, total, unit
        self.interval = progress_interval() if interval is None else interval
        self.stream = stream
        self.clock = clock
        self.started = clock()
        self.first: tuple[float, int] | None = None
        self.last_line: float | None = None

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def note(self, text: str) -> None:
        self._write(f"· {text}")

    def update(self, done: int, *, total: int | None = None, loss: float | None = None,
               tokens_per_s: float | None = None, force: bool = False) -> bool:
        """Record progress; print a line if it is due. Returns whether a line was printed."""
        now = self.clock()
        if total is not None:
            self.total = total
        if self.first is None:
            self.first = (now, done)
        finished = self.total is not None and done >= self.total
        due = self.last_line is None or now - self.last_line >= self.interval
        if not (force or finished or due):
            return False
        self.last_line = now
        self._write(self.line(done, now, loss=loss, tokens_per_s=tokens_per_s))
        return True

    def line(self, done: int, now: float, *, loss: float | None = None, tokens_per_s: float | None = None) -> str:
        parts = [f"{self.what} {self.unit} {done}/{self.total}" if self.total else f"{self.what} {self.unit} {done}"]
        if self.total:
            parts[0] += f" ({100 * done / self.total:.0f}%)"
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if tokens_per_s is not None:
            parts.append(f"{tokens_per_s:,.0f} tok/s")
        parts.append(f"elapsed {format_duration(now - self.started)}")
        eta = self.eta(done, now)
        parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA –")
        return " · ".join(parts)

    def eta(self, done: int, now: float) -> float | None:
        if self.total is None or self.first is None:
            return None
        if done >= self.total:
            return 0.0
        first_time, first_done = self.first
        if done <= first_done or now <= first_time:
            return None
        rate = (done - first_done) / (now - first_time)
        return (self.total - done) / rate


class RequestProgress:
    """`(kind, done, total, tokens)` callbacks -> `ProgressLines`, one phase per kind and call.

    A new phase starts when the kind changes or `done` goes back (the next lm-eval call). Rates are
    measured from the phase's first callback (the end of its first batch), so that batch's tokens
    are not counted in tokens/s.
    """

    def __init__(self, what: str, *, interval: float | None = None, stream=None,
                 clock: Callable[[], float] = time.monotonic):
        self.what, self.interval, self.stream, self.clock = what, interval, stream, clock
        self.kind: str | None = None
        self.done = 0
        self.tokens = 0
        self.lines: ProgressLines | None = None

    def __call__(self, kind: str, done: int, total: int, tokens: int) -> None:
        if self.lines is None or kind != self.kind or done < self.done:
            self.kind, self.tokens = kind, 0
            self.lines = ProgressLines(f"{self.what} {kind}", total, unit="request", interval=self.interval,
                                       stream=self.stream, clock=self.clock)
        else:
            self.tokens += tokens
        self.done = done
        elapsed = self.clock() - self.lines.started
        rate = self.tokens / elapsed if elapsed > 0 and self.tokens else None
        self.lines.update(done, total=total, tokens_per_s=rate)


@contextlib.contextmanager
def step_progress(title: str) -> Iterator[Callable[[str], None]]:
    """A rich spinner with elapsed time; yields `say(message)` that updates its line.

    With plain progress (stdout not a terminal) `say` prints `· message  (elapsed H:MM:SS)` lines instead.
    """
    quiet_transformers()
    if plain_progress():
        started = time.monotonic()

        def say_plain(message: str) -> None:
            sys.stdout.write(f"· {message}  (elapsed {format_duration(time.monotonic() - started)})\n")
            sys.stdout.flush()

        yield say_plain
        return

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

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
