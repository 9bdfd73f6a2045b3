"""`finetune(config)`: one `suntool finetune` run, from an artifact and a JSONL file to a new artifact.

Order of work: validate the config and the output/work directories (cheap errors first),
open the source artifact (verifying the shared half's fingerprint), load and validate the
data, build the method (`suntool.train.methods`), run the loop (`suntool.train.loop`),
then — on the main process only — write the new artifact (`suntool.train.export`) and
remove the work dir `<out>.train/` that held checkpoints, metrics and the config while
the run was in progress.

`--resume` continues from the newest checkpoint in the work dir (its `finetune.yaml` must
match this run's settings except for logging/checkpoint cadence); with no checkpoint
there it starts at step 0 and says so. Without `--resume`, a work dir holding checkpoints
is refused (`--force` discards it). Under `torchrun` every process runs this function;
they make the same decisions from the same files, and only rank 0 writes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suntool.errors import SuntoolError
from suntool.train.config import RESUME_FREE_FIELDS, FinetuneConfig
from suntool.train.loop import Callback, TrainEvent, TrainSummary

if TYPE_CHECKING:
    from suntool.manifest import Manifest
    from suntool.train.data import Dataset

RUN_CONTROL_FIELDS = ("resume", "force", "config_file")


@dataclass(frozen=True)
class FinetuneResult:
    out: Path
    manifest: Manifest | None  # None on processes other than rank 0
    summary: TrainSummary
    train_examples: int
    eval_examples: int
    truncated: int


def saved_config(config: FinetuneConfig) -> dict[str, Any]:
    """The config as written to `finetune.yaml` (run-control flags left out, so it can be re-run as is)."""
    return {key: value for key, value in config.to_dict().items() if key not in RUN_CONTROL_FIELDS}


def _check_resume_config(work_dir: Path, config: FinetuneConfig) -> None:
    from suntool.train.config import read_yaml

    saved_path = work_dir / "finetune.yaml"
    if not saved_path.is_file():
        raise SuntoolError(f"{work_dir} has checkpoints but no finetune.yaml; start over with --force")
    saved = read_yaml(saved_path)
    current = saved_config(config)
    diffs = [f"{key}: checkpoint {saved.get(key)!r} vs now {current.get(key)!r}" for key in current
             if key not in RESUME_FREE_FIELDS and saved.get(key) != current.get(key)]
    if diffs:
        raise SuntoolError(
            f"--resume: the run in {work_dir} used other settings (" + "; ".join(diffs) + "); "
            "resume with the same settings (e.g. --config " + str(saved_path) + ") or start over with --force"
        )


def _split_eval(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    import torch

    count = max(1, round(fraction * len(data)))
    if count >= len(data):
        raise SuntoolError(
            f"--eval-fraction {fraction} of {data.path} ({len(data)} examples) leaves nothing to train on; "
            "lower it or pass --eval-data"
        )
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    return data.subset(sorted(order[count:])), data.subset(sorted(order[:count]))


def finetune(config: FinetuneConfig, callback: Callback | None = None) -> FinetuneResult:
    """Fine-tune `config.artifact` on `config.data` and write the new artifact to `config.out`."""
    from suntool.artifact import open_artifact
    from suntool.checkpoint import load_tokenizer
    from suntool.split import write_config_yaml
    from suntool.train.data import file_sha256, load_examples
    from suntool.train.distributed import barrier, setup_distributed, teardown_distributed
    from suntool.train.export import write_trained_artifact
    from suntool.train.loop import METRICS_NAME, latest_checkpoint, train
    from suntool.train.methods import build_method, check_method_fits

    config.validate()
    out, work_dir = Path(config.out), config.work_dir
    if out.exists() and not config.force:
        finished = " (that run finished; nothing to resume)" if config.resume else ""
        raise SuntoolError(f"{out} already exists{finished}; choose another -o or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise SuntoolError(f"{out} exists and is not a directory; remove it or choose another -o")
    checkpoint = latest_checkpoint(work_dir)
    if checkpoint is not None and not config.resume and not config.force:
        raise SuntoolError(
            f"{work_dir} holds checkpoints of an unfinished run (newest {checkpoint.name}); pass --resume to "
            "continue it or --force to start over"
        )
    if config.resume and checkpoint is not None:
        _check_resume_config(work_dir, config)
    resume_from = checkpoint if config.resume else None

    dist = setup_distributed(config.device)
    say = (lambda message: callback(TrainEvent("message", 0, config.steps, message=message))) \
        if callback is not None and dist.is_main else (lambda _message: None)
    try:
        ref = open_artifact(config.artifact)
        check_method_fits(config.method, ref)
        tokenizer = load_tokenizer(ref.prefill_dir)
        train_set = load_examples(Path(config.data), tokenizer, max_length=config.max_length, truncate=config.truncate)
        eval_set = None
        truncated = train_set.truncated
        if config.eval_data:
            eval_set = load_examples(Path(config.eval_data), tokenizer, max_length=config.max_length,
                                     truncate=config.truncate)
            truncated += eval_set.truncated
        elif config.eval_fraction:
            train_set, eval_set = _split_eval(train_set, config.eval_fraction, config.seed)
        say(f"{len(train_set)} training examples" + (f", {len(eval_set)} held out" if eval_set else "")
            + (f" ({truncated} truncated to {config.max_length} tokens)" if truncated else ""))
        if config.resume and resume_from is None:
            say(f"--resume: no checkpoint in {work_dir}; starting at step 0")
        barrier(dist)
        if dist.is_main:
            if resume_from is None and work_dir.exists():
                shutil.rmtree(work_dir)
            work_dir.mkdir(parents=True, exist_ok=True)
            write_config_yaml(work_dir / "finetune.yaml", saved_config(config))
        barrier(dist)
        say(f"loading the halves of {ref.path} for --method {config.method}")
        setup = build_method(config, ref, dist)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        summary = train(setup, train_set, eval_set, config, dist, pad_id=pad_id, work_dir=work_dir,
                        resume_from=resume_from, callback=callback)
        manifest = None
        if dist.is_main:
            started = ref.manifest.half(setup.task_half if setup.task_half != "model" else
                                        (ref.manifest.shared_half or "prefill"))
            training = {
                "method": config.method,
                "lora": config.lora or None,
                "dropbp": config.dropbp or None,
                "attention": config.attention,
                "data": str(Path(config.data).resolve()),
                "data_sha256": file_sha256(Path(config.data)),
                "eval_data": str(Path(config.eval_data).resolve()) if config.eval_data else None,
                "eval_fraction": config.eval_fraction or None,
                "train_examples": len(train_set),
                "eval_examples": len(eval_set) if eval_set else 0,
                "steps": summary.steps,
                "global_batch": summary.global_batch,
                "world_size": summary.world_size,
                "lr": config.lr,
                "precision": config.precision,
                "final_train_loss": summary.final_loss,
                "initial_eval_loss": summary.initial_eval_loss,
                "final_eval_loss": summary.final_eval_loss,
                "tokens": summary.tokens,
                "seconds": round(summary.seconds, 3),
                "started_from": {"artifact": str(Path(ref.path).resolve()), "sha256": started.sha256},
                "dropbp_rates": summary.dropbp["rates"] if summary.dropbp else None,
            }
            say(f"writing {out}")
            manifest = write_trained_artifact(
                out, ref, setup, tokenizer, training=training, config_yaml=saved_config(config),
                metrics_file=work_dir / METRICS_NAME, force=config.force,
            )
            shutil.rmtree(work_dir, ignore_errors=True)
        barrier(dist)
        if callback is not None and dist.is_main:
            callback(TrainEvent("done", summary.steps, summary.steps, loss=summary.final_loss,
                                eval_loss=summary.final_eval_loss, elapsed_s=summary.seconds, message=str(out)))
        return FinetuneResult(out, manifest, summary, len(train_set), len(eval_set) if eval_set else 0, truncated)
    finally:
        teardown_distributed(dist)
