"""`make demo`: split the embedded SmolLM2-135M and answer through the prefill→decode handoff.

Steps: (1) `suntool split smollm2-135m -o runs/demo/task` (the shared decode half goes to
the store once); (2) load the artifact and answer a few chat prompts, the prompt's K/V
computed by the prefill half and the answer by the decode half; (3) check every answer
token for token against plain Hugging Face `generate` on the unsplit model. Exits
non-zero if any answer differs. Runs on CPU in about a minute.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
]
OUT = Path("runs/demo/task")


def main() -> int:
    import torch
    from rich.console import Console

    from suntool.artifact import load_artifact
    from suntool.commands._ui import quiet_transformers
    from suntool.generation import encode, generate_texts, render_prompt
    from suntool.handoff import SamplingConfig
    from suntool.models import DEFAULT_MODEL, resolve_model
    from suntool.split import SplitConfig, split

    console = Console(highlight=False)
    quiet_transformers()
    console.rule("[bold]1. split")
    console.print(f"suntool split {DEFAULT_MODEL} -o {OUT} --force")
    config = SplitConfig(model=DEFAULT_MODEL, out=OUT, force=True)
    manifest = split(config, progress=lambda message: console.print(f"  · {message}"))
    console.print(f"  prefill (task)   {manifest.prefill.sha256[:23]}…")
    console.print(f"  decode  (shared) {manifest.decode.sha256[:23]}…  stored once, linked into {OUT}/decode")

    console.rule("[bold]2. generate through prefill → decode (fp32, greedy)")
    artifact = load_artifact(OUT, dtype="float32")
    sampling = SamplingConfig(max_new_tokens=48)
    answers = generate_texts(artifact, PROMPTS, sampling, chat=True)

    console.rule("[bold]3. compare with plain Hugging Face generate on the unsplit model")
    from suntool.checkpoint import load_model

    base = load_model(resolve_model(DEFAULT_MODEL), dtype="float32")
    tokenizer = artifact.tokenizer
    texts = [render_prompt(tokenizer, prompt, chat=True) for prompt in PROMPTS]
    ids, mask = encode(tokenizer, texts, add_special_tokens=False)
    with torch.no_grad():
        reference = base.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=sampling.max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    all_equal = True
    for row, (prompt, answer) in enumerate(zip(PROMPTS, answers, strict=True)):
        expected = reference[row, ids.shape[1] :].tolist()[: len(answer.tokens)]
        same = list(answer.tokens) == expected
        all_equal &= same
        verdict = "[green]same tokens as HF generate[/]" if same else "[red]DIFFERS from HF generate[/]"
        console.print(f"[bold]Q:[/] {prompt}\n[bold]A:[/] {answer.text.strip()}")
        console.print(f"   {verdict} ({len(answer.tokens)} tokens)")
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
