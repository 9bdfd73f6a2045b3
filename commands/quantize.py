"""`suntool quantize ART`: QSUN — the shared decode half to 4 bits, as a standard GPTQ checkpoint.

Progress: a spinner and messages on a terminal; when stdout is not a terminal, plain lines (one per
message, and `quantize linear N/M · elapsed · ETA` at a steady interval, `ProgressLines`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from suntool.commands._ui import ProgressLines, console, plain_progress, step_progress


def quantize_command(
    artifact: Path = typer.Argument(..., help="A SUN artifact (its shared decode half is quantized)."),
    bits: int = typer.Option(4, help="Weight bits: 2, 3, 4 or 8."),
    group_size: int = typer.Option(
        None, "--group-size",
        help="Input columns per scale/zero group; -1: per row. Default 128, or 64/32/16 where 128 does not divide.",
    ),
    method: str = typer.Option("gptq", help="gptq (calibrated, error-compensating) or rtn (round to nearest)."),
    calib: str = typer.Option("builtin", help="Calibration JSONL (prompt/completion or messages) or 'builtin'."),
    calib_samples: int = typer.Option(64, "--calib-samples"),
    calib_seq_len: int = typer.Option(256, "--calib-seq-len"),
    desc_act: bool = typer.Option(False, "--desc-act", help="GPTQ act-order (quantize columns by Hessian size)."),
    out: Path = typer.Option(None, "-o", "--out", help="Write a new artifact instead of rewriting ART."),
    force: bool = typer.Option(False, "--force", help="Quantize the decode half even if it is a task half."),
    quantize_lm_head: bool = typer.Option(
        False, "--quantize-lm-head",
        help="Quantize the lm_head too (untied from the input embedding, which stays full precision, if tied).",
    ),
) -> None:
    """Quantize the artifact's shared decode half (weight-only; embeddings, and lm_head unless
    --quantize-lm-head, stay full precision)."""
    from suntool.quantize import QuantizeArtifactConfig, quantize_artifact

    config = QuantizeArtifactConfig(
        artifact=artifact, out=out, bits=bits, group_size=group_size, method=method, desc_act=desc_act,
        calib=calib, calib_samples=calib_samples, calib_seq_len=calib_seq_len, force=force,
        quantize_lm_head=quantize_lm_head,
    )
    lines = ProgressLines("quantize", None, unit="linear") if plain_progress() else None

    def on_layer(done: int, total: int, _name: str) -> None:
        lines.update(done, total=total)

    with step_progress(f"quantizing {artifact}") as say:
        manifest, report = quantize_artifact(config, progress=say, layer_progress=on_layer if lines else None)
    errors = sorted(layer.rel_weight_error for layer in report.layers)
    console.print(
        f"[green]wrote[/] {out or artifact}: decode half {manifest.decode.sha256[:23]}…  "
        f"{config.bits}-bit {config.method}, group {report.config.group_size}, {len(report.layers)} linears in "
        f"{report.seconds:.0f}s, median relative weight error {errors[len(errors) // 2]:.4f}"
        + ("  (lm_head quantized)" if quantize_lm_head else "")
    )


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_command)
