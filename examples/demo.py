"""`make demo`: split the embedded SmolLM2-135M and answer through the prefill→decode handoff.

Steps: (1) `suntool split smollm2-135m -o runs/demo/task` (the shared decode half goes to
the store once); (2) load the artifact and answer a few chat prompts, the prompt's K/V
computed by the prefill half and the answer by the decode half; (3) check every answer
token for token against plain Hugging Face `generate` on the unsplit model (exits non-zero
if any answer differs); (4) a short SUN fine-tune (the prefill half only, against the
frozen shared decode half) on the bundled arithmetic task, and the answer to a held-out
question before and after. Runs on CPU in a few minutes.
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
    if not all_equal:
        return 1

    console.rule("[bold]4. SUN fine-tune: train the prefill half, decode half frozen and shared")
    from suntool.evals.tasks import bundled_path, load_bundled
    from suntool.train import FinetuneConfig, finetune

    tuned = OUT.parent / "task-arith"
    steps = 30
    console.print(f"suntool finetune {OUT} --method sun --data {bundled_path('arith', 'train')} --steps {steps} "
                  f"-o {tuned} --force")
    finetune(FinetuneConfig(
        artifact=str(OUT), data=str(bundled_path("arith", "train")), out=str(tuned), method="sun", steps=steps,
        lr=1e-4, batch_size=4, max_length=256, truncate=True, force=True,
    ), callback=None)
    question = load_bundled("arith", "test")[0]
    after_model = load_artifact(tuned, dtype="float32")
    short = SamplingConfig(max_new_tokens=64, stop_strings=("\n\n",))
    before = generate_texts(artifact, [question["prompt"]], short)[0].text.strip()
    after = generate_texts(after_model, [question["prompt"]], short)[0].text.strip()
    console.print(f"[bold]Q:[/] {question['prompt'].strip()}")
    console.print(f"[bold]before:[/] {before}")
    console.print(f"[bold]after {steps} SUN steps:[/] {after}")
    console.print(f"[bold]reference:[/] {question['completion'].strip()}")
    shared_same = after_model.manifest.decode.sha256 == manifest.decode.sha256
    console.print(f"shared decode half unchanged: {'yes' if shared_same else 'NO'} ({manifest.decode.sha256[:23]}…)")
    return 0 if shared_same else 1


if __name__ == "__main__":
    sys.exit(main())
