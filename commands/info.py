"""`suntool info ART`: what an artifact holds, and whether it is intact."""

from __future__ import annotations

import typer
from suntool.commands._ui import console


def info_command(
    artifact: str = typer.Argument(..., help="Artifact directory (or plain HF checkpoint / built-in name)."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash both halves and compare with their fingerprints."),
) -> None:
    """Show mode, architecture, sizes and fingerprints of each half."""
    from rich.table import Table

    from suntool.info import describe

    report = describe(artifact, verify=verify)
    console.print(
        f"[bold]{report.path}[/]  mode={report.mode}  {report.architecture}  dtype={report.dtype}  "
        f"first_token={report.first_token}  base={report.base}"
    )
    table = Table(show_header=True, header_style="bold")
    for column in ("half", "role", "parameters", "bytes", "fingerprint", "location", "fingerprint check"):
        table.add_column(column)
    for half in report.halves:
        status = {None: "[dim]not checked (--verify)[/]", True: "[green]ok[/]", False: "[red]MISMATCH[/]"}
        status = status[half.verified]
        extra = []
        if half.quantization:
            extra.append(f"{half.quantization.get('quant_method')} {half.quantization.get('bits')}-bit")
        if half.trained_against:
            extra.append(f"trained against {half.trained_against[:19]}…")
        table.add_row(
            half.name, half.role + (f" ({', '.join(extra)})" if extra else ""), f"{half.parameters:,}",
            _human(half.bytes), half.fingerprint[:23] + "…", str(half.location), status,
        )
    console.print(table)
    if report.training:
        console.print(f"training: {report.training}")
    if any(half.verified is False for half in report.halves):
        raise typer.Exit(code=1)


def _human(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TB"


def register(app: typer.Typer) -> None:
    app.command("info")(info_command)


