"""`suntool finetune ART --data train.jsonl -o OUT`: train the task half of an artifact.

Maps flags onto `suntool.train.FinetuneConfig` (flags given on the command line override
the `--config` YAML; flags left out keep the YAML's or the default value), calls
`suntool.train.finetune`, and draws its progress events as a rich progress bar (loss,
tokens/s, ETA) — or, when stdout is not a terminal, as plain lines at a steady interval
(`suntool.commands._ui.ProgressLines`). Runs the same under `torchrun --nproc-per-node N -m suntool finetune ...`
(only rank 0 draws and writes).
"""

from __future__ import annotations

from pathlib import Path

import typer

from suntool.commands._ui import ProgressLines, console, err_console, plain_progress, quiet_transformers


def finetune_command(
    artifact: str = typer.Argument(
        None, help="Artifact from `suntool split` (or an HF dir / built-in name with --method full)."
    ),
    data: Path = typer.Option(None, "--data", help="Training JSONL: {prompt, completion} or {messages} per line."),
    out: Path = typer.Option(None, "-o", "--out", help="The new artifact directory to write."),
    method: str = typer.Option(None, help="sun (train prefill, share decode) | prefillshare | full. (default sun)"),
    lora: int = typer.Option(None, help="Train a LoRA adapter of this rank instead of all weights. (default off)"),
    dropbp: float = typer.Option(None, help="DropBP: drop this fraction of backward FLOPs (0-0.9). (default off)"),
    attention: str = typer.Option(None, help="Attention: standard or affine (Affine-Scaled). (default standard)"),
    steps: int = typer.Option(None, help="Optimizer steps. (default 100)"),
    lr: float = typer.Option(None, help="Peak learning rate (AdamW, warmup + cosine). (default 1e-4)"),
    warmup_steps: int = typer.Option(None, "--warmup-steps", help="Warmup steps. (default 10% of --steps)"),
    weight_decay: float = typer.Option(None, "--weight-decay", help="AdamW weight decay. (default 0)"),
    batch_size: int = typer.Option(None, "--batch-size", help="Examples per micro-batch per process. (default 4)"),
    grad_accum: int = typer.Option(None, "--grad-accum", help="Micro-batches per optimizer step. (default 1)"),
    max_grad_norm: float = typer.Option(None, "--max-grad-norm", help="Gradient clipping; 0 = off. (default 1.0)"),
    max_length: int = typer.Option(None, "--max-length", help="Max prompt+completion tokens. (default 512)"),
    truncate: bool = typer.Option(
        None, "--truncate/--no-truncate", help="Cut over-long examples instead of refusing them. (default refuse)"
    ),
    eval_data: Path = typer.Option(None, "--eval-data", help="Held-out JSONL for the eval loss."),
    eval_fraction: float = typer.Option(None, "--eval-fraction", help="Hold out this fraction of --data instead."),
    eval_every: int = typer.Option(None, "--eval-every", help="Evaluate every N steps (0: start and end only)."),
    save_every: int = typer.Option(None, "--save-every", help="Checkpoint every N steps (for --resume). (default 0)"),
    resume: bool = typer.Option(None, "--resume", help="Continue from the newest checkpoint in OUT.train/."),
    config: Path = typer.Option(None, "--config", help="YAML of finetune settings (flags override it)."),
    seed: int = typer.Option(None, help="Seed for data order, LoRA init and DropBP. (default 0)"),
    bf16: bool = typer.Option(None, "--bf16/--fp32", help="bf16 autocast (weights stay fp32). (default fp32)"),
    gradient_checkpointing: bool = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations in backward."
    ),
    device: str = typer.Option(None, help="auto | cpu | cuda. (default auto)"),
    force: bool = typer.Option(None, "--force", help="Replace OUT (and discard OUT.train/) if it exists."),
) -> None:
    """Fine-tune the task half of an artifact (SUN, PrefillShare, full, LoRA, DropBP)."""
    from suntool.train import FinetuneConfig, finetune

    overrides = {
        "artifact": artifact, "data": data, "out": out, "method": method, "lora": lora, "dropbp": dropbp,
        "attention": attention, "steps": steps, "lr": lr, "warmup_steps": warmup_steps, "weight_decay": weight_decay,
        "batch_size": batch_size, "grad_accum": grad_accum, "max_grad_norm": max_grad_norm, "max_length": max_length,
        "truncate": truncate, "eval_data": eval_data, "eval_fraction": eval_fraction, "eval_every": eval_every,
        "save_every": save_every, "resume": resume, "seed": seed, "bf16": bf16,
        "gradient_checkpointing": gradient_checkpointing, "device": device, "force": force,
    }
    settings = FinetuneConfig.load(config, overrides)
    quiet_transformers()
    with _TrainingProgress(settings.steps) as progress:
        result = finetune(settings, progress.on_event)
    if result.manifest is None:  # not rank 0
        return
    manifest, summary = result.manifest, result.summary
    task = "model" if manifest.mode == "monolithic" else ("prefill" if manifest.shared_half == "decode" else "decode")
    entry = manifest.half("prefill" if task == "model" else task)
    console.print(f"[green]wrote[/] {result.out}  method={settings.method}  mode={manifest.mode}  "
                  f"steps={summary.steps}  {summary.seconds:.1f}s")
    losses = f"train loss {summary.final_loss:.4f}" if summary.final_loss is not None else ""
    if summary.final_eval_loss is not None:
        before = f"{summary.initial_eval_loss:.4f} → " if summary.initial_eval_loss is not None else ""
        losses += f"   eval loss {before}{summary.final_eval_loss:.4f}"
    console.print(f"  {losses}")
    adapter = f"  + adapter {entry.adapter}" if entry.adapter else ""
    console.print(f"  {task:8s} {entry.sha256[:23]}…  trained{adapter}")
    if manifest.shared_half:
        shared = manifest.half(manifest.shared_half)
        console.print(f"  {manifest.shared_half:8s} {shared.sha256[:23]}…  shared, unchanged (trained against it)")


class _TrainingProgress:
    """Draws `TrainEvent`s: a rich progress bar (step, loss, tokens/s, elapsed, ETA) on a terminal,
    plain lines at a steady interval otherwise (`ProgressLines`).

    The bar appears when training starts; messages before that (data, loading) print as lines.
    """

    def __init__(self, total: int, plain: bool | None = None):
        self.total = total
        self.plain = plain_progress() if plain is None else plain
        self.lines = ProgressLines("finetune", total) if self.plain else None
        self.progress = None
        self.task = None
        self.stepped = False

    def __enter__(self) -> _TrainingProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def _start(self, step: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]finetune"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=err_console, transient=False,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task("finetune", total=self.total, completed=step, loss="–", tps="–")

    def say(self, message: str) -> None:
        if self.lines is not None:
            self.lines.note(message)
            return
        (self.progress.console if self.progress is not None else err_console).print(f"[dim]·[/] {message}")

    def on_event(self, event) -> None:
        if event.kind == "start":
            if self.lines is not None:
                self.lines.update(event.step, total=event.total_steps, force=True)
            else:
                self._start(event.step)
            if event.message:
                self.say(event.message)
        elif event.kind == "message":
            self.say(event.message)
        elif event.kind == "step":
            if self.lines is not None:  # the first step always prints: its loss and rate, early
                self.lines.update(event.step, total=event.total_steps, loss=event.loss,
                                  tokens_per_s=event.tokens_per_s, force=not self.stepped)
                self.stepped = True
            elif self.progress is not None:
                self.progress.update(self.task, completed=event.step, loss=f"{event.loss:.4f}",
                                     tps=f"{event.tokens_per_s:,.0f}")
        elif event.kind == "eval":
            self.say(f"step {event.step}: eval loss {event.eval_loss:.4f}")
        elif event.kind in ("checkpoint", "calibrate"):
            self.say(f"step {event.step}: {event.kind} {event.message}")


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_command)
