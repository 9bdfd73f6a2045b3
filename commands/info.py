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

    from suntool.info import describe, training_lines

    report = describe(artifact, verify=verify)
    console.print(
        f"[bold]{report.path}[/]  mode={report.mode}  {report.architecture}  dtype={report.dtype}  "
        f"first_token={report.first_token}  base={report.base}"
    )
    table = Table(show_header=True, header_style="bold")
    for column in ("half", "role", "parameters", "size", "fingerprint", "check"):
        table.add_column(column, overflow="fold")
    for half in report.halves:
        status = {None: "[dim]--verify[/]", True: "[green]ok[/]", False: "[red]MISMATCH[/]"}[half.verified]
        role = half.role
        if half.quantization:
            role += f" ({half.quantization.get('quant_method')} {half.quantization.get('bits')}-bit)"
        table.add_row(
            half.name, role, f"{half.parameters / 1e6:,.1f}M", _human(half.bytes), half.fingerprint[7:19], status
        )
    console.print(table)
    for half in report.halves:
        console.print(f"  {half.name}: {half.location}", markup=False)
        if half.adapter:
            console.print(f"    LoRA adapter {half.adapter} (merged on load)", markup=False)
        if half.trained_against:
            console.print(f"    trained against shared half {half.trained_against}")
    if report.training:
        console.print("training:")
        for line in training_lines(report.training):
            console.print(line, markup=False)
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


