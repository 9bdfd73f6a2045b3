"""Helpers shared by the fine-tuning tests (no tests of its own): tiny artifacts and JSONL data.

Artifacts are split per test (a split of the tiny model takes a fraction of a second) so
each test's shared half lives in that test's own store (conftest's autouse fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

ARITH_PROMPT = "Question: what is {a} plus {b}? Answer:"


def arith_records(count: int = 48, offset: int = 0) -> list[dict]:
    """Prompt/completion records of a tiny addition task (tokens the tiny tokenizer knows well)."""
    records = []
    for index in range(offset, offset + count):
        a, b = index % 9 + 1, (index * 7) % 11
        records.append({"prompt": ARITH_PROMPT.format(a=a, b=b), "completion": f" {a + b}."})
    return records


def write_jsonl(path: Path, records: list) -> Path:
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return Path(path)


def make_artifact(model_dir: Path, out: Path, mode: str = "sun", first_token: str = "decode") -> Path:
    from suntool.split import SplitConfig, split

    split(SplitConfig(model=str(model_dir), out=out, mode=mode, first_token=first_token))
    return out


def tiny_config(artifact: Path, data: Path, out: Path, **changes):
    """A FinetuneConfig sized for CI: a few steps on the tiny model, on CPU."""
    from suntool.train import FinetuneConfig

    values = dict(artifact=str(artifact), data=str(data), out=str(out), steps=12, lr=3e-3, batch_size=8,
                  warmup_steps=1, device="cpu")
    values.update(changes)
    return FinetuneConfig(**values).validate()


def state_dict_of(directory: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def one_torch_thread():
    """Generator body for an autouse fixture: run torch single-threaded for the test.

    The tiny models gain nothing from intra-op threads, and on a busy 2-core machine the
    threads' spin-waits make each small op many times slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def subprocess_env() -> dict:
    """The environment for a child `suntool` process: this test's store, one thread per process."""
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
