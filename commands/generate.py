"""`suntool generate ART "prompt"`: one-shot prefill→decode, streamed to the terminal."""

from __future__ import annotations

import typer

from suntool.commands._ui import console, step_progress


def generate_command(
    artifact: str = typer.Argument(..., help="Artifact directory (or plain HF checkpoint / built-in name)."),
    prompt: str = typer.Argument(..., help="The prompt."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the tokenizer's chat template."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy."),
    top_k: int = typer.Option(0, "--top-k", min=0),
    top_p: float = typer.Option(1.0, "--top-p"),
    seed: int = typer.Option(None, help="Seed for sampling."),
    stop: list[str] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    dtype: str = typer.Option(None, help="Load the halves as bfloat16, float16 or float32."),
    allow_mismatch: bool = typer.Option(
        False, "--allow-mismatch", help="Run a task half with a shared half it was not trained against."
    ),
) -> None:
    """Generate an answer through the artifact's prefill and decode halves."""
    from suntool.artifact import load_artifact
    from suntool.generation import stream_text
    from suntool.handoff import SamplingConfig

    config = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        stop_strings=tuple(stop or ()),
    )
    with step_progress(f"loading {artifact}"):
        loaded = load_artifact(artifact, dtype=dtype, allow_mismatch=allow_mismatch)
    for piece in stream_text(loaded, prompt, config, chat=chat):
        console.print(piece, end="", markup=False, soft_wrap=True)
    console.print()


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
