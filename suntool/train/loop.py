"""The training loop: one readable loop for every method (torchtune/litgpt style).

    for step in range(start, steps):
        global batch of `batch_size * grad_accum * processes` examples (a function of seed and step)
        for each of this process's micro-batches:  loss_sum / global completion tokens -> backward
        clip gradients, AdamW step, warmup+cosine LR step
        log (metrics.jsonl + progress callback); evaluate / checkpoint every N steps

Loss normalisation: every micro-batch's summed CE is divided by the number of completion
tokens in the whole global batch (each process can count them: it holds the data set
and the same order), and multiplied by the number of processes to undo DDP's gradient
averaging. So one process with `grad_accum 2` and two processes with `grad_accum 1`
compute the same gradient on the same examples, and the logged loss is the token-mean
over the global batch.

Data order: an endless stream of seeded per-epoch permutations; step `s` takes stream
items `[s*G, (s+1)*G)` (`G` the global batch), and global-batch chunk `rank*grad_accum + m`
is micro-batch `m` of process `rank`. The data position of a checkpoint is its step.

Checkpoints (`save_every`) go to `<work_dir>/step-NNNNNN/` through `atomic_dir`: the
trainable tensors (safetensors), optimizer and scheduler states (`torch.save`, read back
with `weights_only=True`), and `state.json` (step, data position, RNG state, DropBP rates,
eval history). The two newest are kept. `resume_from` restores all of it, so a resumed run
continues exactly where the checkpoint was taken.

The library prints nothing: it reports `TrainEvent`s to a callback (the command draws a
progress bar from them).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suntool.errors import SuntoolError

if TYPE_CHECKING:
    from suntool.train.config import FinetuneConfig
    from suntool.train.data import Dataset
    from suntool.train.distributed import DistInfo
    from suntool.train.methods import MethodSetup

CHECKPOINTS_KEPT = 2
CHECKPOINT_PREFIX = "step-"
METRICS_NAME = "metrics.jsonl"


@dataclass(frozen=True)
class TrainEvent:
    """What the loop reports. kind: start | step | eval | checkpoint | calibrate | message | done."""

    kind: str
    step: int
    total_steps: int
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    eval_loss: float | None = None
    elapsed_s: float = 0.0
    message: str = ""


Callback = Callable[[TrainEvent], None]


@dataclass(frozen=True)
class WarmupCosine:
    """LR multiplier: linear warmup over `warmup` steps, then cosine from 1 down to `min_ratio`."""

    warmup: int
    total: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class StepSampler:
    """Example indices of each optimizer step's global batch (see the module docstring)."""

    def __init__(self, size: int, global_batch: int, seed: int):
        self.size, self.global_batch, self.seed = size, global_batch, seed
        self._epochs: dict[int, list[int]] = {}

    def _epoch(self, epoch: int) -> list[int]:
        import torch

        if epoch not in self._epochs:
            generator = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
            self._epochs = {epoch: torch.randperm(self.size, generator=generator).tolist()}
        return self._epochs[epoch]

    def indices(self, step: int) -> list[int]:
        start = step * self.global_batch
        return [self._epoch(pos // self.size)[pos % self.size] for pos in range(start, start + self.global_batch)]


@dataclass
class TrainState:
    """Everything about a run in progress that is not a tensor."""

    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    last_loss: float | None = None
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    dropbp_calibrated_at: int | None = None


@dataclass(frozen=True)
class TrainSummary:
    steps: int
    final_loss: float | None
    initial_eval_loss: float | None
    final_eval_loss: float | None
    tokens: int
    seconds: float
    global_batch: int
    world_size: int
    resumed_from: int | None
    dropbp: dict[str, Any] | None


def autocast(config: FinetuneConfig, device):
    import torch

    if not config.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def evaluate(setup: MethodSetup, data: Dataset, config: FinetuneConfig, dist: DistInfo, pad_id: int) -> float:
    """Token-mean completion loss over `data` (sharded over processes), under no_grad."""
    import torch

    from suntool.train.data import collate
    from suntool.train.distributed import all_reduce_sum

    setup.eval_mode()
    mine = list(range(dist.rank, len(data), dist.world_size))
    total, count = 0.0, 0
    with torch.no_grad(), autocast(config, dist.device):
        for start in range(0, len(mine), config.batch_size):
            batch = collate([data.examples[i] for i in mine[start:start + config.batch_size]], pad_id)
            loss, n = setup.loss_sum(batch.to(dist.device), raw=True)
            total += float(loss)
            count += n
    setup.train_mode()
    total, count = all_reduce_sum(dist, [total, float(count)])
    return total / max(count, 1.0)


def _checkpoints(work_dir: Path) -> list[Path]:
    cut = len(CHECKPOINT_PREFIX)
    found = [p for p in work_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[cut:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[cut:]))


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The newest complete checkpoint dir under `work_dir` (an interrupted one never has the name)."""
    found = _checkpoints(Path(work_dir)) if Path(work_dir).is_dir() else []
    return found[-1] if found else None


def save_checkpoint(path: Path, setup: MethodSetup, optimizer, scheduler, state: TrainState, global_batch: int) -> None:
    """Write one checkpoint atomically (trainable tensors, optimizer, scheduler, RNG, data position)."""
    import torch
    from safetensors.torch import save_file

    from suntool.atomic import atomic_dir

    with atomic_dir(path, replace=True) as tmp:
        tensors = {name: p.detach().to("cpu").contiguous().clone() for name, p in setup.named_trainable_parameters()}
        save_file(tensors, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        payload = {
            "step": state.step,
            "samples_seen": state.step * global_batch,
            "global_batch": global_batch,
            "tokens_seen": state.tokens_seen,
            "elapsed_s": state.elapsed_s,
            "last_loss": state.last_loss,
            "eval_history": state.eval_history,
            "dropbp_calibrated_at": state.dropbp_calibrated_at,
            "dropbp": setup.dropbp.state_dict() if setup.dropbp else None,
            "torch_rng": torch.get_rng_state().tolist(),
        }
        (tmp / "state.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    for old in _checkpoints(path.parent)[:-CHECKPOINTS_KEPT]:
        import shutil

        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, setup: MethodSetup, optimizer, scheduler, global_batch: int) -> TrainState:
    """Restore a checkpoint written by `save_checkpoint` into the live objects; return its state."""
    import torch
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if state["global_batch"] != global_batch:
        raise SuntoolError(
            f"{path} was written with a global batch of {state['global_batch']} examples, this run has "
            f"{global_batch}; resume with the same --batch-size x --grad-accum x processes"
        )
    tensors = load_file(str(path / "trainable.safetensors"))
    params = dict(setup.named_trainable_parameters())
    if set(tensors) != set(params):
        raise SuntoolError(f"{path} holds other trainable tensors than this run; resume with the same settings")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name].to(param.device, param.dtype))
    saved = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    if setup.dropbp is not None and state.get("dropbp"):
        setup.dropbp.load_state_dict(state["dropbp"])
    return TrainState(
        step=state["step"], tokens_seen=state["tokens_seen"], elapsed_s=state["elapsed_s"],
        last_loss=state["last_loss"], eval_history=[tuple(item) for item in state["eval_history"]],
        dropbp_calibrated_at=state.get("dropbp_calibrated_at"),
    )


class MetricsLog:
    """`metrics.jsonl`: one JSON object per logged step or evaluation (main process only)."""

    def __init__(self, path: Path, enabled: bool, keep_until: int | None = None):
        self.path, self.enabled = path, enabled
        if enabled and keep_until is not None and path.is_file():  # drop lines past the resumed step
            from suntool.atomic import atomic_write_text

            lines = [line for line in path.read_text(encoding="utf-8").splitlines()
                     if line.strip() and json.loads(line).get("step", 0) <= keep_until]
            atomic_write_text(path, "".join(line + "\n" for line in lines))
        elif enabled and keep_until is None:
            path.write_text("", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


def _calibrate_dropbp(setup: MethodSetup, batch, config: FinetuneConfig, dist: DistInfo) -> list[float]:
    """Measure each branch's sensitivity on one micro-batch and re-allocate DropBP's rates."""
    from suntool.train.distributed import all_reduce_sum

    params = setup.trainable_parameters()

    def grad_norm_of(dropped: frozenset[int]) -> float:
        setup.dropbp.set_dropped(dropped)
        with autocast(config, dist.device):
            loss, n = setup.loss_sum(batch, raw=True)
        if loss.requires_grad:
            (loss / max(n, 1)).backward()
        norm = math.sqrt(sum(float((p.grad.float() ** 2).sum()) for p in params if p.grad is not None))
        for p in params:
            p.grad = None
        return float(norm)

    def reduce(values: list[float]) -> list[float]:
        return [v / dist.world_size for v in all_reduce_sum(dist, values)]

    return setup.dropbp.calibrate(grad_norm_of, reduce)


def train(
    setup: MethodSetup,
    train_set: Dataset,
    eval_set: Dataset | None,
    config: FinetuneConfig,
    dist: DistInfo,
    *,
    pad_id: int,
    work_dir: Path,
    resume_from: Path | None = None,
    callback: Callback | None = None,
) -> TrainSummary:
    """Run `config.steps` optimizer steps of `setup` on `train_set` (see the module docstring)."""
    import torch

    from suntool.train.data import collate
    from suntool.train.distributed import all_reduce_sum, barrier

    emit = callback if (callback is not None and dist.is_main) else (lambda _event: None)
    device, steps, accum = dist.device, config.steps, config.grad_accum
    params = setup.trainable_parameters()
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.95), eps=1e-8, foreach=False,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(config.warmup, steps, config.min_lr_ratio))
    global_batch = config.batch_size * accum * dist.world_size
    sampler = StepSampler(len(train_set), global_batch, config.seed)
    state = TrainState()
    if resume_from is not None:
        state = load_checkpoint(resume_from, setup, optimizer, scheduler, global_batch)
    metrics = MetricsLog(work_dir / METRICS_NAME, dist.is_main, keep_until=state.step if resume_from else None)
    resumed = state.step if resume_from is not None else None
    emit(TrainEvent("start", state.step, steps, elapsed_s=state.elapsed_s,
                    message=f"resumed at step {state.step}" if resumed is not None else ""))

    def run_eval(step: int) -> None:
        if eval_set is None:
            return
        value = evaluate(setup, eval_set, config, dist, pad_id)
        state.eval_history.append((step, value))
        metrics.write({"step": step, "eval_loss": value})
        emit(TrainEvent("eval", step, steps, eval_loss=value, elapsed_s=state.elapsed_s))

    if resumed is None and eval_set is not None:
        emit(TrainEvent("message", state.step, steps,
                        message=f"held-out loss before training ({len(eval_set)} examples)"))
        run_eval(0)
    calibrate_at = max(1, round(0.1 * steps)) if steps > 1 else None
    setup.train_mode()
    started = time.perf_counter() - state.elapsed_s
    for step in range(state.step, steps):
        tick = time.perf_counter()
        indices = sampler.indices(step)
        global_tokens = sum(len(train_set.examples[i].completion_ids) for i in indices)
        chunks = [indices[k * config.batch_size:(k + 1) * config.batch_size]
                  for k in range(dist.rank * accum, (dist.rank + 1) * accum)]
        batches = [collate([train_set.examples[i] for i in chunk], pad_id).to(device) for chunk in chunks]
        dropbp = setup.dropbp
        if dropbp is not None and step == calibrate_at and not dropbp.calibrated:
            from suntool.train.dropbp import CALIBRATION_EXAMPLES

            probe = collate([train_set.examples[i] for i in chunks[0][:CALIBRATION_EXAMPLES]], pad_id).to(device)
            rates = _calibrate_dropbp(setup, probe, config, dist)
            state.dropbp_calibrated_at = step
            emit(TrainEvent("calibrate", step, steps, elapsed_s=time.perf_counter() - started,
                            message="DropBP rates " + " ".join(f"{r:.1f}" for r in rates)))
        loss_sum, tokens = 0.0, 0
        for micro, batch in enumerate(batches):
            if dropbp is not None:
                dropbp.sample(step, micro)
            sync = micro == accum - 1
            with contextlib.nullcontext() if sync else setup.no_sync():
                with autocast(config, device):
                    loss, _count = setup.loss_sum(batch)
                if loss.requires_grad:  # not when DropBP dropped every path to the trained weights
                    (loss * (dist.world_size / global_tokens)).backward()
            loss_sum += float(loss.detach())
            tokens += batch.tokens
        if dropbp is not None:
            dropbp.set_dropped(())
        max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_total, tokens_total = all_reduce_sum(dist, [loss_sum, float(tokens)])
        state.step = step + 1
        state.last_loss = loss_total / global_tokens
        state.tokens_seen += int(tokens_total)
        state.elapsed_s = time.perf_counter() - started
        tokens_per_s = tokens_total / max(time.perf_counter() - tick, 1e-9)
        if state.step % config.log_every == 0 or state.step == steps:
            record = {"step": state.step, "loss": state.last_loss, "lr": lr, "grad_norm": grad_norm,
                      "tokens": int(tokens_total), "tokens_per_s": tokens_per_s, "elapsed_s": state.elapsed_s}
            if dropbp is not None:
                record["dropbp_kept_flops"] = dropbp.realised_kept_fraction
            metrics.write(record)
        emit(TrainEvent("step", state.step, steps, loss=state.last_loss, lr=lr, grad_norm=grad_norm,
                        tokens_per_s=tokens_per_s, elapsed_s=state.elapsed_s))
        if config.eval_every and state.step % config.eval_every == 0 and state.step < steps:
            run_eval(state.step)
        if config.save_every and state.step % config.save_every == 0 and state.step < steps:
            if dist.is_main:
                path = work_dir / f"{CHECKPOINT_PREFIX}{state.step:06d}"
                save_checkpoint(path, setup, optimizer, scheduler, state, global_batch)
                emit(TrainEvent("checkpoint", state.step, steps, elapsed_s=state.elapsed_s, message=str(path)))
            barrier(dist)
    run_eval(steps)
    initial = state.eval_history[0][1] if state.eval_history and state.eval_history[0][0] == 0 else None
    summary = TrainSummary(
        steps=steps,
        final_loss=state.last_loss,
        initial_eval_loss=initial,
        final_eval_loss=state.eval_history[-1][1] if state.eval_history else None,
        tokens=state.tokens_seen,
        seconds=state.elapsed_s,
        global_batch=global_batch,
        world_size=dist.world_size,
        resumed_from=resumed,
        dropbp=None if setup.dropbp is None else {
            **setup.dropbp.state_dict(), "calibrated_at": state.dropbp_calibrated_at,
            "expected_kept_fraction": setup.dropbp.expected_kept_fraction,
            "realised_kept_fraction": setup.dropbp.realised_kept_fraction,
        },
    )
    return summary
