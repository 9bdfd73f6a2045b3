"""The common interface of the synthetic tasks: registry, JSONL splits, accuracy, chat rendering.

- `SyntheticTask(name, generate, score, stop_strings)`: `generate(n, seed)` returns `n` records
  (dicts with `prompt`, `completion` and task-specific answer fields; `prompt + completion` is
  the training text, the completion starts with one space); `score(output, record)` returns 1.0
  or 0.0 for one model output. The scorers here are the single source of truth: the lm-eval
  tasks call them through `suntool.evals.lm_eval_utils`.
- `TASKS`: the generation tasks `arith`, `program`, `funcall`; `CHOICE_TASKS`: the
  multiple-choice tasks `arith_mc`, `facts_mc` (records also carry `choices` and `label`);
  `ALL_TASKS`: both.
- `write_split(task, out_dir, n_train, n_test, seed)`: `test.jsonl` is the first `n_test`
  records of `generate(n_train + n_test, seed)` and `train.jsonl` the rest, so the splits never
  share a prompt and the test split does not depend on `n_train`. Each file is written
  atomically (temp file, fsync, `os.replace`).
- `BUNDLED`: the sizes and seed of the splits shipped in `evals/data/<task>/`;
  `write_bundled_data()` regenerates them, and a test checks the shipped bytes still match.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from suntool.evals import arith, arith_mc, facts_mc, funcall, program

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class SyntheticTask:
    name: str
    generate: Callable[[int, int], list[dict]]
    score: Callable[[str, dict], float]
    stop_strings: tuple[str, ...]


def _task(module) -> SyntheticTask:
    return SyntheticTask(module.NAME, module.generate, module.score, tuple(module.STOP_STRINGS))


TASKS: dict[str, SyntheticTask] = {m.NAME: _task(m) for m in (arith, program, funcall)}
CHOICE_TASKS: dict[str, SyntheticTask] = {m.NAME: _task(m) for m in (arith_mc, facts_mc)}
ALL_TASKS: dict[str, SyntheticTask] = {**TASKS, **CHOICE_TASKS}


@dataclass(frozen=True)
class BundledSplit:
    n_train: int
    n_test: int
    seed: int


BUNDLED_SEED = 2026
BUNDLED: dict[str, BundledSplit] = {
    "arith": BundledSplit(n_train=2000, n_test=300, seed=BUNDLED_SEED),
    "program": BundledSplit(n_train=1500, n_test=300, seed=BUNDLED_SEED),
    "funcall": BundledSplit(n_train=700, n_test=300, seed=BUNDLED_SEED),
    "arith_mc": BundledSplit(n_train=300, n_test=300, seed=BUNDLED_SEED),
    "facts_mc": BundledSplit(n_train=300, n_test=300, seed=BUNDLED_SEED),
}


def get_task(task: str | SyntheticTask) -> SyntheticTask:
    """A task by name (any of `ALL_TASKS`), or the task itself."""
    if isinstance(task, SyntheticTask):
        return task
    try:
        return ALL_TASKS[task]
    except KeyError:
        raise KeyError(f"unknown synthetic task {task!r}; known: {', '.join(ALL_TASKS)}") from None


def to_jsonl(records: Iterable[dict]) -> str:
    """One JSON object per line (keys in record order, UTF-8 kept), newline-terminated."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL file (blank lines skipped)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def split_records(task: str | SyntheticTask, n_train: int, n_test: int, seed: int) -> dict[str, list[dict]]:
    """`{"train": [...], "test": [...]}` as `write_split` writes them."""
    records = get_task(task).generate(n_train + n_test, seed)
    return {"train": records[n_test:], "test": records[:n_test]}


def write_split(
    task: str | SyntheticTask, out_dir: str | Path, n_train: int, n_test: int, seed: int
) -> dict[str, Path]:
    """Write `train.jsonl` and `test.jsonl` of `task` into `out_dir`; returns their paths."""
    from suntool.atomic import atomic_write_text

    out = Path(out_dir)
    paths = {}
    for split, records in split_records(task, n_train, n_test, seed).items():
        paths[split] = out / f"{split}.jsonl"
        atomic_write_text(paths[split], to_jsonl(records))
    return paths


def bundled_path(task: str, split: str = "test", data_dir: str | Path | None = None) -> Path:
    """Where the shipped `split` of `task` lives."""
    get_task(task)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return Path(data_dir or DATA_DIR) / task / f"{split}.jsonl"


def load_bundled(task: str, split: str = "test") -> list[dict]:
    """The shipped records of one split of `task` (no generation, no network)."""
    return read_jsonl(bundled_path(task, split))


def write_bundled_data(data_dir: str | Path | None = None) -> dict[str, dict[str, Path]]:
    """Regenerate every shipped split under `data_dir` (default: the package's `data/`)."""
    root = Path(data_dir or DATA_DIR)
    return {
        name: write_split(name, root / name, spec.n_train, spec.n_test, spec.seed)
        for name, spec in BUNDLED.items()
    }


def accuracy(task: str | SyntheticTask, outputs: Sequence[str], records: Sequence[dict]) -> float:
    """Mean score of `outputs[i]` against `records[i]`."""
    if len(outputs) != len(records):
        raise ValueError(f"{len(outputs)} outputs for {len(records)} records")
    if not records:
        raise ValueError("accuracy of zero records is undefined")
    scorer = get_task(task).score
    return sum(scorer(output, record) for output, record in zip(outputs, records, strict=True)) / len(records)


def to_messages(record: dict) -> dict:
    """The record as a chat: `{"messages": [user: prompt, assistant: completion]}`."""
    return {
        "messages": [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"].lstrip()},
        ]
    }
