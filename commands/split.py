"""`suntool split MODEL -o OUT`: write a split prefill/decode artifact."""

from __future__ import annotations

from pathlib import Path

import typer

from suntool.commands._ui import console, step_progress


def split_command(
    model: str = typer.Argument("smollm2-135m", help="HF checkpoint directory or built-in name (smollm2-135m)."),
    out: Path = typer.Option(..., "-o", "--out", help="Artifact directory to write."),
    mode: str = typer.Option("sun", help="sun (share decode) | prefillshare (share prefill) | monolithic."),
    dtype: str = typer.Option(None, help="Store the halves as bfloat16, float16 or float32 (default: as the source)."),
    first_token: str = typer.Option("decode", help="Who computes the first new token: decode (default) or prefill."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    store: Path = typer.Option(
        None, help="Shared-half store (default $SUNTOOL_STORE or ~/.local/share/suntool/store)."
    ),
) -> None:
    """Split MODEL into prefill and decode halves; the shared half is stored once by fingerprint."""
    from suntool.split import SplitConfig, split

    config = SplitConfig(
        model=model, out=out, mode=mode, dtype=dtype, first_token=first_token, force=force, store=store
    )
    with step_progress(f"splitting {model}") as say:
        manifest = split(config, progress=say)
    shared = manifest.shared_half
    console.print(f"[green]wrote[/] {out}  mode={manifest.mode}  {manifest.architecture}  {manifest.dtype}")
    for name in ("prefill", "decode"):
        entry = manifest.half(name)
        where = "shared, " + ("linked from store" if not Path(entry.path).is_absolute() else f"in store {entry.path}")
        console.print(f"  {name:8s} {entry.sha256[:23]}…  {where if name == shared else 'task half'}")


def register(app: typer.Typer) -> None:
    app.command("split")(split_command)
