"""The accuracy experiment: SUN vs PrefillShare vs full / LoRA fine-tunes vs the base model.

    .venv/bin/python examples/sun_vs_baselines.py --task program --task arith \\
        [--train 400] [--test 60] [--steps 50] [--batch-size 8] [--work runs/sun_vs_baselines]

For each task of `suntool.evals.tasks` it trains, on SmolLM2-135M (the embedded default,
or `--model`), from the task's bundled train split:

    full               full fine-tune of one model (monolithic artifact)       --method full
    sun                train the prefill half, decode = the frozen base      --method sun
    prefillshare       train the decode half, prefill = the frozen base      --method prefillshare
    full-lora / sun-lora / prefillshare-lora   the same with a LoRA adapter  --lora R
    full-affine        full, with Affine-Scaled Attention                    --attention affine

and scores greedy answers on the first `--test` records of the bundled test split with
the task's own scorer (`TASKS[task].score`), next to:

    base               the untrained model
    mismatched         the full fine-tune's weights as prefill, the base as decode: what
                       happens when a conventionally fine-tuned model is served on a shared
                       base decoder without SUN training

Every run is an ordinary `suntool.train.finetune` call (the config is saved beside each
output as finetune.yaml), resumable: a finished run (its artifact exists) or a finished
evaluation (`eval-<variant>.json`) is skipped, an interrupted training run continues from
its last checkpoint. Results go to `<work>/results.json` and `<work>/results.md`
(accuracy, final held-out loss, training wall time per variant and task).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

VARIANTS = ("base", "full", "sun", "prefillshare", "full-lora", "sun-lora", "prefillshare-lora", "mismatched",
            "full-affine")
TRAINED = {  # variant -> (method, which base artifact, lora?, attention)
    "full": ("full", "sun", False, "standard"),
    "sun": ("sun", "sun", False, "standard"),
    "prefillshare": ("prefillshare", "prefillshare", False, "standard"),
    "full-lora": ("full", "sun", True, "standard"),
    "sun-lora": ("sun", "sun", True, "standard"),
    "prefillshare-lora": ("prefillshare", "prefillshare", True, "standard"),
    "full-affine": ("full", "sun", False, "affine"),  # Affine-Scaled Attention, otherwise the same as full
}


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", action="append", help="task of suntool.evals.tasks (repeatable; default arith)")
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="variants to run (default: all)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--work", type=Path, default=Path("runs/sun_vs_baselines"))
    parser.add_argument("--train", type=int, default=400, help="training records (from the bundled split)")
    parser.add_argument("--test", type=int, default=60, help="test records scored")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4, help="learning rate of full-weight runs")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-lr", type=float, default=2e-3)
    parser.add_argument("--max-length", type=int, default=320)
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0: from the task's longest test answer")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def prepare_data(task: str, work: Path, n_train: int, n_test: int) -> tuple[Path, Path, list[dict]]:
    from suntool.atomic import atomic_write_text
    from suntool.evals.tasks import load_bundled, to_jsonl

    train, test = load_bundled(task, "train")[:n_train], load_bundled(task, "test")[:n_test]
    paths = (work / "train.jsonl", work / "test.jsonl")
    for path, records in zip(paths, (train, test), strict=True):
        if not path.is_file():
            atomic_write_text(path, to_jsonl(records))
    return paths[0], paths[1], test


def prepare_bases(model: str, work: Path) -> dict[str, Path]:
    from suntool.split import SplitConfig, split

    bases = {}
    for mode in ("sun", "prefillshare"):
        out = work / f"base-{mode}"
        if not (out / "suntool.json").is_file():
            split(SplitConfig(model=model, out=out, mode=mode, dtype="float32", force=out.exists()))
        bases[mode] = out
    return bases


def train_variant(variant: str, task_dir: Path, bases: dict[str, Path], train: Path, test: Path, args) -> Path:
    from suntool.train import FinetuneConfig, finetune

    method, base, lora, attention = TRAINED[variant]
    out = task_dir / variant
    if (out / "suntool.json").is_file():
        print(f"  {out.parent.name}: {variant} already trained", flush=True)
        return out
    print(f"  {out.parent.name}: training {variant}", flush=True)
    config = FinetuneConfig(
        artifact=str(bases[base]), data=str(train), out=str(out), method=method, attention=attention,
        lora=args.lora_rank if lora else 0,
        steps=args.steps, lr=args.lora_lr if lora else args.lr, batch_size=args.batch_size,
        max_length=args.max_length, truncate=True, eval_data=str(test), save_every=max(1, args.steps // 4),
        resume=True, seed=args.seed, device="cpu",
    ).validate()
    started = time.time()

    def report(event) -> None:
        if event.kind in ("eval", "done") or (event.kind == "step" and event.step % 10 == 0):
            loss = event.eval_loss if event.kind == "eval" else event.loss
            what = {"eval": "eval loss", "step": "train loss", "done": "done, train loss"}[event.kind]
            print(f"    [{variant}] step {event.step}/{event.total_steps} {what} {loss:.4f} "
                  f"({time.time() - started:.0f}s)", flush=True)

    finetune(config, report)
    return out


def load_pair(variant: str, task_dir: Path, bases: dict[str, Path]):
    """The LoadedArtifact to score for `variant` (the mismatched pairing is assembled here)."""
    from suntool.artifact import LoadedArtifact, load_artifact

    if variant == "base":
        return load_artifact(bases["sun"])
    if variant == "mismatched":
        full, base = load_artifact(task_dir / "full"), load_artifact(bases["sun"])
        return LoadedArtifact(ref=base.ref, prefill_model=full.prefill_model, decode_model=base.decode_model,
                              tokenizer=base.tokenizer)
    return load_artifact(task_dir / variant)


def score_answers(loaded, task: str, test: list[dict], max_new_tokens: int = 0) -> dict:
    """Greedy answers of `loaded` to the test prompts, scored by the task's own scorer."""
    from suntool.evals.tasks import TASKS
    from suntool.generation import generate_texts
    from suntool.handoff import SamplingConfig

    spec = TASKS[task]
    max_new = max_new_tokens or 8 + max(len(loaded.tokenizer(r["completion"])["input_ids"]) for r in test)
    sampling = SamplingConfig(max_new_tokens=max_new, stop_strings=spec.stop_strings)
    started = time.time()
    outputs = []
    for start in range(0, len(test), 16):
        chunk = test[start:start + 16]
        outputs += [g.text for g in generate_texts(loaded, [r["prompt"] for r in chunk], sampling)]
    scores = [spec.score(output, record) for output, record in zip(outputs, test, strict=True)]
    return {"task": task, "accuracy": sum(scores) / len(scores), "n": len(scores),
            "eval_seconds": round(time.time() - started, 1), "examples": [
                {"prompt": r["prompt"][-120:], "output": o, "score": s}
                for r, o, s in list(zip(test, outputs, scores, strict=True))[:5]]}


def completion_nll(loaded, test: list[dict]) -> float:
    """Mean NLL per completion token of the test records, served as `loaded` serves them.

    The prompt's K/V come from the prefill half, the completion is scored by the decode half
    (teacher-forced): the held-out loss of a pairing, whether or not it was trained together.
    """
    import torch

    from suntool.handoff import continuation_logits, prefill

    tokenizer, total, count = loaded.tokenizer, 0.0, 0
    with torch.no_grad():
        for record in test:
            prompt = tokenizer(record["prompt"], return_tensors="pt")
            completion = tokenizer(record["completion"], add_special_tokens=False, return_tensors="pt")["input_ids"]
            handoff = prefill(loaded.prefill_model, prompt["input_ids"], prompt["attention_mask"],
                              first_token=loaded.manifest.handoff.first_token)
            logits = continuation_logits(loaded.decode_model, handoff, completion)
            total += float(torch.nn.functional.cross_entropy(logits[0].float(), completion[0], reduction="sum"))
            count += completion.shape[1]
    return total / count


def with_pair_nll(cached: Path, result: dict, load, test: list[dict]) -> dict:
    """`result` with its pairing's held-out NLL, computed once and kept in the cached JSON."""
    from suntool.atomic import atomic_write_text

    if "pair_nll" not in result:
        result["pair_nll"] = completion_nll(load(), test)
        atomic_write_text(cached, json.dumps(result, indent=2) + "\n")
    return result


def training_summary(artifact: Path) -> dict:
    """Wall time and held-out loss recorded in a fine-tuned artifact's manifest ({} if untrained)."""
    manifest_path = artifact / "suntool.json"
    if not manifest_path.is_file():
        return {}
    training = json.loads(manifest_path.read_text()).get("training") or {}
    return {"train_seconds": training.get("seconds"), "final_eval_loss": training.get("final_eval_loss"),
            "initial_eval_loss": training.get("initial_eval_loss"), "steps": training.get("steps")}


def cached_eval(cached: Path, variant: str, load, task: str, test: list[dict], args, trained: Path | None) -> dict:
    """Score the pairing `load()` returns (accuracy, NLL as served, `trained`'s training summary), once:
    the result is kept in `cached` and read back on a re-run."""
    from suntool.atomic import atomic_write_text

    if cached.is_file():
        result = json.loads(cached.read_text())
    else:
        loaded = load()
        result = {"variant": variant, **score_answers(loaded, task, test, args.max_new_tokens),
                  **(training_summary(trained) if trained else {}), "pair_nll": completion_nll(loaded, test)}
        atomic_write_text(cached, json.dumps(result, indent=2) + "\n")
    return with_pair_nll(cached, result, load, test)


def evaluate(variant: str, task: str, task_dir: Path, bases: dict[str, Path], test: list[dict], args) -> dict:
    return cached_eval(task_dir / f"eval-{variant}.json", variant, lambda: load_pair(variant, task_dir, bases),
                       task, test, args, task_dir / variant)


def table(results: list[dict]) -> str:
    lines = ["| task | variant | accuracy | held-out NLL as served | training's held-out loss (before → after) "
             "| train time |", "|---|---|---|---|---|---|"]
    for r in results:
        loss = (f"{r['initial_eval_loss']:.3f} → {r['final_eval_loss']:.3f}" if r.get("final_eval_loss") is not None
                else "–")
        train = f"{r['train_seconds']:.0f} s" if r.get("train_seconds") is not None else "–"
        served = f"{r['pair_nll']:.3f}" if r.get("pair_nll") is not None else "–"
        lines.append(f"| {r['task']} | {r['variant']} | {r['accuracy']:.3f} ({round(r['accuracy'] * r['n'])}/{r['n']})"
                     f" | {served} | {loss} | {train} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from suntool.atomic import atomic_write_text
    from suntool.commands._ui import quiet_transformers

    args = parse(argv)
    quiet_transformers()
    tasks = args.task or ["arith"]
    variants = args.variant or list(VARIANTS)
    if "mismatched" in variants and "full" not in variants:
        variants.insert(0, "full")
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"splitting {args.model} (once)", flush=True)
    bases = prepare_bases(args.model, args.work)
    results = []
    for task in tasks:
        task_dir = args.work / task
        train, test_path, test = prepare_data(task, task_dir, args.train, args.test)
        for variant in variants:
            if variant in TRAINED:
                train_variant(variant, task_dir, bases, train, test_path, args)
        for variant in variants:
            result = evaluate(variant, task, task_dir, bases, test, args)
            print(f"  {task}: {variant:18s} accuracy {result['accuracy']:.3f}", flush=True)
            results.append(result)
    atomic_write_text(args.work / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(args.work / "results.md", table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
