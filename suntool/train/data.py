"""Fine-tuning data: JSONL records → tokenized (prompt, completion) pairs → padded batches.

A record is one JSON object per line, either

    {"prompt": "...", "completion": "..."}
    {"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}

Prompt/completion records: the prompt is tokenized as `suntool generate` tokenizes a raw
prompt (`add_special_tokens=True`), the completion without special tokens and with the
tokenizer's EOS appended, so the model learns to stop. Chat records go through the
tokenizer's chat template: the prompt is every message before the last one rendered with
`add_generation_prompt=True` (what `suntool generate --chat` feeds the model), the
completion is the rest of the rendered conversation (the last assistant turn and its
end-of-turn marker). The loss is only on completion tokens; earlier assistant turns are
prompt context (in a split model they are prefilled, not decoded).

`load_examples` validates every line and raises one `DataError` naming the file and line
of every bad record (the first ten, then "and N more"). Examples longer than
`max_length` tokens are an error unless `truncate=True`, which cuts the prompt from the
left (keeping at least one prompt token) and, if the completion alone is too long, the
completion from the right.

`collate` pads a list of examples into a `Batch`: prompts left-padded (as the handoff
expects), completions right-padded, each at least two columns wide.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from suntool.errors import SuntoolError

if TYPE_CHECKING:
    import torch

MAX_LISTED_ERRORS = 10


class DataError(SuntoolError):
    """A fine-tuning data file cannot be used; the message names file:line of each bad record."""


@dataclass(frozen=True)
class Example:
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    line: int  # 1-based line in the source file

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass(frozen=True)
class Dataset:
    path: Path
    examples: tuple[Example, ...]
    truncated: int = 0  # how many examples were cut to max_length

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def completion_tokens(self) -> int:
        return sum(len(example.completion_ids) for example in self.examples)

    def subset(self, indices: list[int]) -> Dataset:
        return Dataset(self.path, tuple(self.examples[i] for i in indices), self.truncated)


@dataclass
class Batch:
    """One micro-batch. Prompts left-padded [B, Lp], completions right-padded [B, Lc]."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor

    def to(self, device) -> Batch:
        return Batch(*(tensor.to(device) for tensor in (
            self.prompt_ids, self.prompt_mask, self.completion_ids, self.completion_mask)))

    @property
    def completion_tokens(self) -> int:
        return int(self.completion_mask.sum())

    @property
    def tokens(self) -> int:
        return int(self.prompt_mask.sum()) + self.completion_tokens


def _too_long_message(total: int, max_length: int) -> str:
    return (f"example is {total} tokens, longer than --max-length {max_length}; raise --max-length, "
            "pass --truncate, or shorten the record")


def _truncate(prompt: list[int], completion: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut the prompt from the left (keep >= 1 token), then the completion from the right."""
    if len(completion) > max_length - 1:
        completion = completion[: max_length - 1]
    room = max_length - len(completion)
    return prompt[-room:], completion


def _record_texts(record: object, tokenizer) -> tuple[str, str, bool]:
    """(prompt text, completion text, is_chat) of one parsed record; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or len(messages) < 2:
            raise ValueError("field 'messages' must be a list of at least two messages (a prompt and an answer)")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                    or not isinstance(message.get("content"), str):
                raise ValueError(f"messages[{index}] must be an object with string 'role' and 'content'")
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"the last message must have role 'assistant' (the answer), got {messages[-1]['role']!r}")
        if not messages[-1]["content"]:
            raise ValueError("the last (assistant) message is empty")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat records need a tokenizer with a chat template; this model has none — "
                             "use {\"prompt\", \"completion\"} records")
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the conversation differently from its prompt part, so the "
                             "answer cannot be separated; use {\"prompt\", \"completion\"} records")
        return prompt, full[len(prompt):], True
    missing = [key for key in ("prompt", "completion") if key not in record]
    if missing:
        raise ValueError(f"missing field {missing[0]!r} (records need 'prompt' and 'completion', or 'messages')")
    for key in ("prompt", "completion"):
        if not isinstance(record[key], str):
            raise ValueError(f"field {key!r} must be a string, got {type(record[key]).__name__}")
        if not record[key]:
            raise ValueError(f"field {key!r} is empty")
    return record["prompt"], record["completion"], False


def _tokenize(prompt: str, completion: str, chat: bool, tokenizer) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if not chat and eos is not None and (not completion_ids or completion_ids[-1] != eos):
        completion_ids = [*completion_ids, eos]
    return list(prompt_ids), list(completion_ids)


def load_examples(path: Path, tokenizer, *, max_length: int, truncate: bool = False) -> Dataset:
    """Read, validate and tokenize a JSONL file; raise one `DataError` listing every bad line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; pass a JSONL file with one record per line")
    if max_length < 2:
        raise DataError(f"--max-length must be at least 2 (one prompt and one completion token), got {max_length}")
    errors: list[str] = []
    examples: list[Example] = []
    truncated = 0
    with path.open(encoding="utf-8", errors="strict") as handle:
        try:
            lines = handle.read().splitlines()
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 text ({err}); save it as UTF-8 JSONL") from err
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            errors.append(f"{where}: not valid JSON ({err.msg} at column {err.colno})")
            continue
        try:
            prompt, completion, chat = _record_texts(record, tokenizer)
        except ValueError as err:
            errors.append(f"{where}: {err}")
            continue
        prompt_ids, completion_ids = _tokenize(prompt, completion, chat, tokenizer)
        if not prompt_ids or not completion_ids:
            errors.append(f"{where}: the {'prompt' if not prompt_ids else 'completion'} tokenizes to nothing")
            continue
        total = len(prompt_ids) + len(completion_ids)
        if total > max_length:
            if not truncate:
                errors.append(f"{where}: {_too_long_message(total, max_length)}")
                continue
            prompt_ids, completion_ids = _truncate(prompt_ids, completion_ids, max_length)
            truncated += 1
        examples.append(Example(tuple(prompt_ids), tuple(completion_ids), number))
    if errors:
        shown = errors[:MAX_LISTED_ERRORS]
        more = len(errors) - len(shown)
        tail = f"\n  … and {more} more" if more else ""
        noun = "record" if len(errors) == 1 else "records"
        raise DataError(f"{path}: {len(errors)} bad {noun}:\n  " + "\n  ".join(shown) + tail)
    if not examples:
        raise DataError(
            f"{path} holds no records; add one JSON object per line, e.g. "
            '{"prompt": "2+2=", "completion": "4"} or {"messages": [...]}'
        )
    return Dataset(path=path, examples=tuple(examples), truncated=truncated)


def collate(examples: list[Example], pad_id: int, *, min_columns: int = 2) -> Batch:
    """Pad examples into a `Batch` (prompts on the left, completions on the right).

    Both sides get at least `min_columns` columns (extra ones are padding), so every
    micro-batch runs both halves of a split model: with one-token prompts the prefill half
    would otherwise have nothing to do, and DDP needs every process to run the same modules.
    """
    import torch

    batch = len(examples)
    prompt_len = max(min_columns, *(len(example.prompt_ids) for example in examples))
    completion_len = max(min_columns, *(len(example.completion_ids) for example in examples))
    prompt_ids = torch.full((batch, prompt_len), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((batch, prompt_len), dtype=torch.long)
    completion_ids = torch.full((batch, completion_len), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((batch, completion_len), dtype=torch.long)
    for row, example in enumerate(examples):
        n, m = len(example.prompt_ids), len(example.completion_ids)
        prompt_ids[row, prompt_len - n:] = torch.tensor(example.prompt_ids)
        prompt_mask[row, prompt_len - n:] = 1
        completion_ids[row, :m] = torch.tensor(example.completion_ids)
        completion_mask[row, :m] = 1
    return Batch(prompt_ids, prompt_mask, completion_ids, completion_mask)


def file_sha256(path: Path) -> str:
    """`sha256:<hex>` of a data file, recorded in the trained artifact's manifest."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()
