"""The accuracy experiment: SUN vs PrefillShare vs full / LoRA fine-tunes vs the base model, with intervals.

    .venv/bin/python examples/sun_vs_baselines.py [--task arith --task program --task funcall] \\
        [--seeds 3] [--train 400] [--val 64] [--test 300] [--steps 50] [--eval-every 10] \\
        [--difficulty standard|hard] [--variant V ...] [--work runs/sun_vs_baselines] [--plan]

For each task of `suntool.evals.tasks` (default: arith, program, funcall — math, code and function
calling, the SUN paper's three families) it trains, on SmolLM2-135M (the embedded default, or
`--model`), from the task's bundled train split:

    full               full fine-tune of one model (monolithic artifact)       --method full
    sun                train the prefill half, decode = the frozen base      --method sun
    prefillshare       train the decode half, prefill = the frozen base      --method prefillshare
    full-lora / sun-lora / prefillshare-lora   the same with a LoRA adapter  --lora R
    full-affine        full, with Affine-Scaled Attention (not in the default set)
    full-dropbp0.5 / 0.75 / 0.875, full-lora-dropbp0.5 / ...   full (or full-lora) with DropBP at that
                       target rate (not in the default set; seeded like full)

`full`, `sun` and `prefillshare` are trained with `--seeds` seeds (0, 1, ...: data order and
initialisation); the LoRA and affine rows with seed 0. Each is scored on the first `--test` records
of the bundled test split (greedy, through prefill half → K/V → decode half, with the task's own
scorer `TASKS[task].score`, every record's score kept), next to:

    base               the untrained model
    mismatched         the seed-0 full fine-tune's weights as prefill, the base as decode: a
                       conventionally fine-tuned model served on a shared base decoder

The held-out loss curve of every run is logged on `--val` records taken from the train split
after the `--train` training records (never trained on, never the test split), every
`--eval-every` steps. `--difficulty hard` makes the tasks harder where the standard ones
saturate (`examples/harder_tasks.py`: longer programs, longer word problems) and works under
`<work>/<task>-hard/`.

Resumable: a finished run (its artifact exists) or a finished evaluation (`eval-<run>.json`) is
skipped, an interrupted training run continues from its last checkpoint. The order is task by
task: base, then seed 0 of full / sun / prefillshare and mismatched, then the other seeds, then
the LoRA rows. After every evaluation the summary is rewritten (`examples/experiment_report.py`):
`<work>/results.json` (one row per run, per-record scores included), `<work>/summary.md` (accuracy
mean and 95 % interval over seeds — Wilson over test records for single-seed rows —, NLL as served,
the paired bootstrap differences sun − full and prefillshare − full on the same test records)
and `<work>/loss_curves.png`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DROPBP_RATES = (0.5, 0.75, 0.875)
DROPBP_VARIANTS = tuple(f"full-dropbp{p}" for p in DROPBP_RATES) + tuple(f"full-lora-dropbp{p}" for p in DROPBP_RATES)
VARIANTS = ("base", "full", "sun", "prefillshare", "full-lora", "sun-lora", "prefillshare-lora", "mismatched",
            "full-affine", *DROPBP_VARIANTS)
DEFAULT_VARIANTS = VARIANTS[:8]  # not full-affine, not the DropBP rows (ask for them with --variant)
SEEDED = ("full", "sun", "prefillshare", *DROPBP_VARIANTS)  # trained with every seed
TRAINED = {  # variant -> (method, which base artifact, lora?, attention, DropBP rate)
    "full": ("full", "sun", False, "standard", 0.0),
    "sun": ("sun", "sun", False, "standard", 0.0),
    "prefillshare": ("prefillshare", "prefillshare", False, "standard", 0.0),
    "full-lora": ("full", "sun", True, "standard", 0.0),
    "sun-lora": ("sun", "sun", True, "standard", 0.0),
    "prefillshare-lora": ("prefillshare", "prefillshare", True, "standard", 0.0),
    "full-affine": ("full", "sun", False, "affine", 0.0),  # Affine-Scaled Attention, otherwise the same as full
    **{f"full-dropbp{p}": ("full", "sun", False, "standard", p) for p in DROPBP_RATES},
    **{f"full-lora-dropbp{p}": ("full", "sun", True, "standard", p) for p in DROPBP_RATES},
}
DEFAULT_TASKS = ("arith", "program", "funcall")


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", action="append", help="task of suntool.evals.tasks (repeatable; default all three)")
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="variants to run (default: all but "
                        "full-affine)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--work", type=Path, default=Path("runs/sun_vs_baselines"))
    parser.add_argument("--seeds", type=int, default=3, help="seeds of full / sun / prefillshare")
    parser.add_argument("--train", type=int, default=400, help="training records (from the bundled split)")
    parser.add_argument("--val", type=int, default=64, help="held-out records for the loss curve (from the train "
                        "split, after the training records)")
    parser.add_argument("--test", type=int, default=300, help="test records scored")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=10, help="held-out loss every N steps (the curve)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4, help="learning rate of full-weight runs")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-lr", type=float, default=2e-3)
    parser.add_argument("--max-length", type=int, default=320)
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0: from the task's longest test answer")
    parser.add_argument("--difficulty", choices=("standard", "hard"), default="standard")
    parser.add_argument("--plan", action="store_true", help="print the runs in order (done or to do) and stop")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    return args


def task_dir_name(task: str, difficulty: str) -> str:
    return task if difficulty == "standard" else f"{task}-{difficulty}"


def prepare_data(task: str, work: Path, n_train: int, n_test: int, n_val: int = 0,
                 difficulty: str = "standard") -> tuple[Path, Path, list[dict], Path | None]:
    """(train.jsonl, test.jsonl, test records, val.jsonl or None) under `work` (written once)."""
    from suntool.atomic import atomic_write_text
    from suntool.evals.tasks import to_jsonl

    train_all, test_all = task_records(task, difficulty, n_train + n_val, n_test)
    train, val, test = train_all[:n_train], train_all[n_train:n_train + n_val], test_all[:n_test]
    if len(train) < n_train or len(test) < n_test or len(val) < n_val:
        from suntool.errors import SuntoolError

        raise SuntoolError(f"{task}: not enough records for --train {n_train} --val {n_val} --test {n_test}")
    paths = (work / "train.jsonl", work / "test.jsonl", work / "val.jsonl")
    for path, records in zip(paths, (train, test, val), strict=True):
        if records and not path.is_file():
            atomic_write_text(path, to_jsonl(records))
    return paths[0], paths[1], test, (paths[2] if val else None)


def task_records(task: str, difficulty: str, n_train: int, n_test: int) -> tuple[list[dict], list[dict]]:
    """The train and test records of `task`: the bundled splits, or harder generated ones."""
    if difficulty == "standard":
        from suntool.evals.tasks import load_bundled

        return load_bundled(task, "train"), load_bundled(task, "test")
    import harder_tasks

    return harder_tasks.split(task, n_train, n_test)


def prepare_bases(model: str, work: Path) -> dict[str, Path]:
    from suntool.split import SplitConfig, split

    bases = {}
    for mode in ("sun", "prefillshare"):
        out = work / f"base-{mode}"
        if not (out / "suntool.json").is_file():
            split(SplitConfig(model=model, out=out, mode=mode, dtype="float32", force=out.exists()))
        bases[mode] = out
    return bases


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def train_variant(variant: str, task_dir: Path, bases: dict[str, Path], train: Path, val: Path | None, args,
                  seed: int = 0) -> Path:
    """Train one run (skipped when its artifact exists; resumed from its checkpoints when interrupted)."""
    from suntool.train import FinetuneConfig, finetune

    method, base, lora, attention, dropbp = TRAINED[variant]
    out = task_dir / run_name(variant, seed)
    if (out / "suntool.json").is_file():
        print(f"  {task_dir.name}: {out.name} already trained", flush=True)
        return out
    print(f"  {task_dir.name}: training {out.name}", flush=True)
    config = FinetuneConfig(
        artifact=str(bases[base]), data=str(train), out=str(out), method=method, attention=attention,
        lora=args.lora_rank if lora else 0, dropbp=dropbp,
        steps=args.steps, lr=args.lora_lr if lora else args.lr, batch_size=args.batch_size,
        max_length=args.max_length, truncate=True, eval_data=str(val) if val else None,
        eval_every=args.eval_every, save_every=max(1, args.steps // 5), resume=True, seed=seed, device="cpu",
    ).validate()
    started = time.time()

    def report(event) -> None:
        if event.kind in ("eval", "done") or (event.kind == "step" and event.step % 10 == 0):
            loss = event.eval_loss if event.kind == "eval" else event.loss
            what = {"eval": "held-out loss", "step": "train loss", "done": "done, train loss"}[event.kind]
            print(f"    [{out.name}] step {event.step}/{event.total_steps} {what} {loss:.4f} "
                  f"({time.time() - started:.0f}s)", flush=True)

    finetune(config, report)
    return out


def load_pair(variant: str, task_dir: Path, bases: dict[str, Path], seed: int = 0):
    """The LoadedArtifact to score for `variant` (the mismatched pairing is assembled here)."""
    from suntool.artifact import LoadedArtifact, load_artifact

    if variant == "base":
        return load_artifact(bases["sun"])
    if variant == "mismatched":
        full, base = load_artifact(task_dir / run_name("full", seed)), load_artifact(bases["sun"])
        return LoadedArtifact(ref=base.ref, prefill_model=full.prefill_model, decode_model=base.decode_model,
                              tokenizer=base.tokenizer)
    return load_artifact(task_dir / run_name(variant, seed))


def score_answers(loaded, task: str, test: list[dict], max_new_tokens: int = 0,
                  engine_path: Path | None = None) -> dict:
    """Greedy answers of `loaded` to the test prompts, scored by the task's own scorer (every score kept).

    With `engine_path` (the artifact's directory) the answers come from the serving engine, every
    prompt at once (`suntool.serve.offline`: the same greedy texts as the reference path, tested,
    ×3.5 faster on arith); without it (the mismatched pairing has no directory) from
    `generate_texts` in left-padded batches of 16.
    """
    from suntool.evals.tasks import TASKS

    spec = TASKS[task]
    max_new = max_new_tokens or 8 + max(len(loaded.tokenizer(r["completion"])["input_ids"]) for r in test)
    started = time.time()
    prompts = [r["prompt"] for r in test]
    if engine_path is not None:
        from suntool.commands._ui import ProgressLines
        from suntool.serve.engine import EngineConfig
        from suntool.serve.offline import generate_offline
        from suntool.serve.sequence import SamplingParams

        ids = [loaded.tokenizer(prompt, add_special_tokens=True)["input_ids"] for prompt in prompts]
        params = SamplingParams(max_tokens=max_new, stop=tuple(spec.stop_strings))
        lines = ProgressLines(f"scoring {engine_path.name} on {task}", len(ids), unit="answer")
        outputs = [r.text for r in generate_offline(str(engine_path), ids, params,
                                                    config=EngineConfig(dtype="float32"),
                                                    on_finished=lambda done, total, _: lines.update(done))]
    else:
        from suntool.generation import generate_texts
        from suntool.handoff import SamplingConfig

        sampling = SamplingConfig(max_new_tokens=max_new, stop_strings=spec.stop_strings)
        outputs = []
        for start in range(0, len(test), 16):
            outputs += [g.text for g in generate_texts(loaded, prompts[start:start + 16], sampling)]
    scores = [float(spec.score(output, record)) for output, record in zip(outputs, test, strict=True)]
    return {"task": task, "accuracy": sum(scores) / len(scores), "n": len(scores), "scores": scores,
            "generated_on": "engine" if engine_path is not None else "reference",
            "eval_seconds": round(time.time() - started, 1), "examples": [
                {"prompt": r["prompt"][-120:], "output": o, "score": s}
                for r, o, s in list(zip(test, outputs, scores, strict=True))[:5]]}


def completion_nll(loaded, test: list[dict], batch: int = 16) -> float:
    """Mean NLL per completion token of the test records, served as `loaded` serves them.

    The prompt's K/V come from the prefill half (left-padded batches), the completion is scored by
    the decode half (teacher-forced, right-padded): the held-out loss of a pairing, whether or not
    it was trained together.
    """
    import torch

    from suntool.generation import encode
    from suntool.handoff import continuation_logits, prefill

    tokenizer, total, count = loaded.tokenizer, 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.no_grad():
        for start in range(0, len(test), batch):
            chunk = test[start:start + batch]
            ids, mask = encode(tokenizer, [r["prompt"] for r in chunk])
            completions = [tokenizer(r["completion"], add_special_tokens=False)["input_ids"] for r in chunk]
            width = max(len(c) for c in completions)
            cont = torch.tensor([c + [pad] * (width - len(c)) for c in completions])
            cont_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in completions])
            handoff = prefill(loaded.prefill_model, ids, mask, first_token=loaded.manifest.handoff.first_token)
            handoff = handoff.to(dtype=loaded.decode_model.dtype)
            logits = continuation_logits(loaded.decode_model, handoff, cont, cont_mask).float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), cont.reshape(-1),
                                                    reduction="none")
            total += float((nll * cont_mask.reshape(-1)).sum())
            count += int(cont_mask.sum())
    return total / count


def training_summary(artifact: Path) -> dict:
    """Wall time, held-out losses and the loss curve recorded with a fine-tuned artifact ({} if untrained)."""
    manifest_path = artifact / "suntool.json"
    if not manifest_path.is_file():
        return {}
    training = json.loads(manifest_path.read_text()).get("training") or {}
    curve, train_curve = [], []
    metrics = artifact / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            if "eval_loss" in row:
                curve.append((row["step"], row["eval_loss"]))
            elif "loss" in row:
                train_curve.append((row["step"], row["loss"]))
    return {"train_seconds": training.get("seconds"), "final_eval_loss": training.get("final_eval_loss"),
            "initial_eval_loss": training.get("initial_eval_loss"), "steps": training.get("steps"),
            "eval_curve": curve, "train_curve": train_curve}


def cached_eval(cached: Path, variant: str, load, task: str, test: list[dict], args, trained: Path | None,
                seed: int | None = None, engine_path: Path | None = None) -> dict:
    """Score the pairing `load()` returns (accuracy, per-record scores, NLL as served, `trained`'s training
    summary), once: the result is kept in `cached` and read back on a re-run."""
    from suntool.atomic import atomic_write_text

    if cached.is_file():
        result = json.loads(cached.read_text())
        if "scores" in result and "pair_nll" in result:
            return result
    loaded = load()
    result = {"variant": variant, "seed": seed,
              **score_answers(loaded, task, test, args.max_new_tokens, engine_path=engine_path),
              **(training_summary(trained) if trained else {}), "pair_nll": completion_nll(loaded, test)}
    atomic_write_text(cached, json.dumps(result, indent=2) + "\n")
    return result


def evaluate(variant: str, task: str, task_dir: Path, bases: dict[str, Path], test: list[dict], args,
             seed: int | None = 0) -> dict:
    name = variant if seed is None else run_name(variant, seed)
    trained = task_dir / name if variant in TRAINED else None
    directory = None if variant == "mismatched" else (bases["sun"] if variant == "base" else trained)
    return cached_eval(task_dir / f"eval-{name}.json", variant, lambda: load_pair(variant, task_dir, bases, seed or 0),
                       task, test, args, trained, seed, engine_path=directory)


def plan(variants: list[str], seeds: int) -> list[tuple[str, int | None]]:
    """(variant, seed) in the order they run: base, seed 0 of the seeded rows and mismatched, the other
    seeds, then the single-seed rows (seed None: not trained)."""
    order: list[tuple[str, int | None]] = []
    if "base" in variants:
        order.append(("base", None))
    for seed in range(seeds):
        order += [(v, seed) for v in SEEDED if v in variants and v not in DROPBP_VARIANTS]
        if seed == 0 and "mismatched" in variants:
            order.append(("mismatched", 0))
    order += [(v, 0) for v in variants if v in TRAINED and v not in SEEDED]
    return order


def seeded_order(variants: list[str], seeds: int) -> list[tuple[str, int | None]]:
    """`plan` with the DropBP rows after the single-seed rows (every seed of each)."""
    order = [(v, s) for v, s in plan(variants, seeds) if v not in DROPBP_VARIANTS]
    return order + [(v, seed) for seed in range(seeds) for v in DROPBP_VARIANTS if v in variants]


def main(argv=None) -> int:
    import experiment_report

    from suntool.commands._ui import quiet_transformers

    args = parse(argv)
    quiet_transformers()
    tasks = args.task or list(DEFAULT_TASKS)
    variants = args.variant or list(DEFAULT_VARIANTS)
    if "mismatched" in variants and "full" not in variants:
        variants.insert(0, "full")
    order = seeded_order(variants, args.seeds)
    if args.plan:
        for task in tasks:
            task_dir = args.work / task_dir_name(task, args.difficulty)
            for variant, seed in order:
                name = variant if seed is None else run_name(variant, seed)
                state = "done" if (task_dir / f"eval-{name}.json").is_file() else "to do"
                print(f"{task_dir.name:14s} {name:22s} {state}")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"splitting {args.model} (once)", flush=True)
    bases = prepare_bases(args.model, args.work)
    for task in tasks:
        task_dir = args.work / task_dir_name(task, args.difficulty)
        train, _test_path, test, val = prepare_data(task, task_dir, args.train, args.test, args.val, args.difficulty)
        for variant, seed in order:
            if variant in TRAINED:
                train_variant(variant, task_dir, bases, train, val, args, seed)
            result = evaluate(variant, task, task_dir, bases, test, args, seed)
            print(f"  {task_dir.name}: {result['variant']:18s} seed {seed} accuracy {result['accuracy']:.3f}",
                  flush=True)
            experiment_report.write(args.work)
    print((args.work / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
